"""The original app's status check, measured side by side with the handler by bench/run.sh and bench/instructions.sh.

The original QueueMonitor is a Python function that checks a job with the `openai` package's
`AzureOpenAI(...).batches.retrieve(id)` and logs where the results are. This does the same against the bench's fake
API, in a loop, in one process. Prints "<checks> <seconds> <cpu seconds>": the checks done, the wall time they took
and the process's CPU time over the loop (imports and client set-up left out).

Usage: original_check.py ENDPOINT BATCH_ID (--seconds S | --count N)
"""

import logging
import sys
import time

from openai import AzureOpenAI


def main() -> None:
    endpoint, batch_id, mode, amount = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    # No retries: the fake always answers, and a retry would hide an error behind a second request.
    client = AzureOpenAI(
        azure_endpoint=endpoint, api_key="bench-key", api_version="2025-04-01-preview", max_retries=0
    )
    checks = 0
    cpu_started = time.process_time()
    started = time.perf_counter()
    deadline = started + amount if mode == "--seconds" else None
    while (deadline is None and checks < amount) or (deadline is not None and time.perf_counter() < deadline):
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            logging.info(
                "Batch %s %s. Output: %s, errors: %s",
                batch.id,
                batch.status,
                getattr(batch, "output_blob", None),
                getattr(batch, "error_blob", None),
            )
        checks += 1
    print(checks, time.perf_counter() - started, time.process_time() - cpu_started)


if __name__ == "__main__":
    main()
