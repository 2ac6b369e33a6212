/* bench/logs/flood.c: the app both supervisors run in bench/logs/run.sh.
 *
 * Writes N numbered lines of exactly 64 bytes (10-digit number, 53 bytes of
 * padding, '\n') to stdout as fast as it can, through a 64 KiB fully buffered
 * stdio buffer, then sleeps until it is stopped (so neither supervisor restarts
 * it and floods again). If FLOOD_STAMPS is set, it appends "begin <us>" before
 * the first write and "end <us>" once every byte has been handed to the pipe
 * (CLOCK_REALTIME, microseconds), so the benchmark can tell the flood itself
 * apart from the time the supervisor took to start the app.
 *
 * Usage: flood [lines]   (default 1000000)
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void stamp(const char *path, const char *what) {
  struct timespec ts;
  FILE *f;
  if (!path || !*path) return;
  clock_gettime(CLOCK_REALTIME, &ts);
  f = fopen(path, "a");
  if (!f) return;
  fprintf(f, "%s %lld\n", what, (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000);
  fclose(f);
}

int main(int argc, char **argv) {
  static char buf[64 * 1024];
  const char *stamps = getenv("FLOOD_STAMPS");
  long n = argc > 1 ? atol(argv[1]) : 1000000L, i;
  char line[65];

  signal(SIGPIPE, SIG_DFL);
  setvbuf(stdout, buf, _IOFBF, sizeof buf);
  memset(line, '.', 63);
  line[63] = '\n';
  line[64] = 0;
  stamp(stamps, "begin");
  for (i = 0; i < n; i++) {
    /* 10 digits, then the fixed padding: 63 characters and '\n' */
    int d = (int)(i % 10000000000L);
    char *p = line + 10;
    while (p > line) { *--p = (char)('0' + d % 10); d /= 10; }
    if (fwrite(line, 1, 64, stdout) != 64) return 1;
  }
  if (fflush(stdout) != 0) return 1;
  stamp(stamps, "end");
  for (;;) pause();
}
