//! The small part of OData `$filter` that the batch list documents (azure-openai-batch.md §1.1): comparisons of
//! `created_at` with a number and `status eq '<status>'`, joined by `and`.

use super::Job;

/// A parsed `$filter`: every clause must hold.
#[derive(Debug, PartialEq)]
pub struct Filter(Vec<Clause>);

#[derive(Debug, PartialEq)]
enum Clause {
    Created(Op, u64),
    /// Compared case-insensitively: the documented example writes `'Completed'`.
    Status(String),
}

#[derive(Debug, PartialEq, Clone, Copy)]
enum Op {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
}

impl Filter {
    pub fn parse(text: &str) -> Result<Self, String> {
        let clauses = text.split(" and ").map(clause).collect::<Result<Vec<_>, _>>()?;
        Ok(Filter(clauses))
    }

    pub fn matches(&self, job: &Job) -> bool {
        self.0.iter().all(|c| match c {
            Clause::Created(op, n) => match op {
                Op::Gt => job.created_at > *n,
                Op::Ge => job.created_at >= *n,
                Op::Lt => job.created_at < *n,
                Op::Le => job.created_at <= *n,
                Op::Eq => job.created_at == *n,
            },
            Clause::Status(s) => job.status.eq_ignore_ascii_case(s),
        })
    }
}

fn clause(text: &str) -> Result<Clause, String> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [field, op, value] = parts[..] else { return Err(format!("`{text}` is not `field op value`")) };
    let op = match op {
        "gt" => Op::Gt,
        "ge" => Op::Ge,
        "lt" => Op::Lt,
        "le" => Op::Le,
        "eq" => Op::Eq,
        other => return Err(format!("unknown operator `{other}`")),
    };
    match field {
        "created_at" => value.parse().map(|n| Clause::Created(op, n)).map_err(|_| format!("`{value}` is not a number")),
        "status" if op == Op::Eq => value
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .map(|v| Clause::Status(v.to_string()))
            .ok_or_else(|| format!("`{value}` is not a quoted string")),
        other => Err(format!("cannot filter on `{other}` with `{op:?}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(created_at: u64, status: &str) -> Job {
        Job { status: status.into(), ..Job::new("batch_x".into(), "", "", "", created_at) }
    }

    #[test]
    fn the_documented_example_parses_and_matches() {
        let f = Filter::parse("created_at gt 1728773533 and created_at lt 1729032733 and status eq 'Completed'")
            .expect("parses");
        assert!(f.matches(&job(1728773534, "completed")));
        assert!(!f.matches(&job(1728773533, "completed")), "gt is strict");
        assert!(!f.matches(&job(1729032733, "completed")), "lt is strict");
        assert!(!f.matches(&job(1728773534, "failed")));
        assert!(Filter::parse("created_at ge 5").expect("ge").matches(&job(5, "x")));
        assert!(Filter::parse("input_blob eq 'x'").is_err());
        assert!(Filter::parse("created_at gt soon").is_err());
        assert!(Filter::parse("created_at").is_err());
    }
}
