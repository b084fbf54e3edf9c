/* What the kernel alone charges for one request/response exchange between two processes on one core, the shape of
 * a check's call to the fake API: a 200-byte message one way over loopback TCP (or a pipe), a 200-byte answer back.
 * Built and run by bench/floor.sh. Usage: roundtrip tcp|pipe [exchanges] */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { SIZE = 200 };

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}

static void exact(int fd, char *buf, int write_it) {
  for (int done = 0; done < SIZE;) {
    ssize_t n = write_it ? write(fd, buf + done, SIZE - done) : read(fd, buf + done, SIZE - done);
    if (n <= 0) { perror("roundtrip"); exit(1); }
    done += (int)n;
  }
}

int main(int argc, char **argv) {
  int tcp = argc > 1 && strcmp(argv[1], "tcp") == 0;
  int n = argc > 2 ? atoi(argv[2]) : 100000;
  char buf[SIZE];
  memset(buf, 'a', sizeof buf);
  int mine, theirs; /* this process's end and the child's end */
  int a[2], b[2];
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  int listener = -1;
  if (tcp) {
    socklen_t len = sizeof addr;
    listener = socket(AF_INET, SOCK_STREAM, 0);
    if (bind(listener, (void *)&addr, sizeof addr) || getsockname(listener, (void *)&addr, &len) || listen(listener, 1)) {
      perror("roundtrip: listen"); return 1;
    }
  } else if (pipe(a) || pipe(b)) {
    perror("roundtrip: pipe"); return 1;
  }
  pid_t child = fork();
  if (child == 0) { /* the "fake API": answer each message */
    int in, out, one = 1;
    if (tcp) {
      in = out = socket(AF_INET, SOCK_STREAM, 0);
      if (connect(in, (void *)&addr, sizeof addr)) { perror("roundtrip: connect"); _exit(1); }
      setsockopt(in, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    } else {
      in = a[0]; out = b[1];
    }
    for (int i = 0; i < n; i++) { exact(in, buf, 0); exact(out, buf, 1); }
    _exit(0);
  }
  int one = 1;
  if (tcp) {
    mine = theirs = accept(listener, NULL, NULL);
    setsockopt(mine, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  } else {
    mine = a[1]; theirs = b[0];
  }
  double start = now_ns();
  for (int i = 0; i < n; i++) { exact(mine, buf, 1); exact(theirs, buf, 0); }
  printf("%s round trip: %.1f us\n", tcp ? "loopback TCP" : "pipe", (now_ns() - start) / n / 1000.0);
  waitpid(child, NULL, 0);
  return 0;
}
