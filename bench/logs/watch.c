/* bench/logs/watch.c: the observer in bench/logs/run.sh, so that polling costs
 * neither tool a fork per sample on a busy machine.
 *
 * Every 2 ms, until the out log and the files rotated aside from it (the entries of
 * DIR named "out.log" or "out__*.log") hold TARGET bytes in all:
 *   - sums their sizes,
 *   - reads VmRSS of PID (the supervisor's daemon) and keeps the peak.
 * Gives up after DEADLINE seconds, when PID is gone, or when the sizes have not
 * moved for STALL seconds and the app has stamped "end" in STAMPS (it wrote
 * everything; the rest is lost). Prints one line:
 *   <done|incomplete> <time reached, us since the epoch, or 0> <bytes> <peak VmRSS kB> <samples>
 *
 * Usage: watch PID TARGET DIR STAMPS DEADLINE STALL
 */
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static long long now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static long long out_bytes(const char *dir) {
  char path[4096];
  struct dirent *e;
  struct stat st;
  long long total = 0;
  DIR *d = opendir(dir);
  if (!d) return 0;
  while ((e = readdir(d))) {
    size_t n = strlen(e->d_name);
    if (strcmp(e->d_name, "out.log") != 0 &&
        !(strncmp(e->d_name, "out__", 5) == 0 && n > 9 && strcmp(e->d_name + n - 4, ".log") == 0))
      continue;
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    if (stat(path, &st) == 0) total += st.st_size;
  }
  closedir(d);
  return total;
}

static long rss_kb(const char *status) {
  char line[256];
  long kb = -1;
  FILE *f = fopen(status, "r");
  if (!f) return -1;
  while (fgets(line, sizeof line, f))
    if (strncmp(line, "VmRSS:", 6) == 0) { kb = atol(line + 6); break; }
  fclose(f);
  return kb;
}

static int ended(const char *stamps) {
  char line[128];
  int yes = 0;
  FILE *f = fopen(stamps, "r");
  if (!f) return 0;
  while (fgets(line, sizeof line, f))
    if (strncmp(line, "end ", 4) == 0) yes = 1;
  fclose(f);
  return yes;
}

int main(int argc, char **argv) {
  char status[64];
  long long target, deadline, stall, start, last = -1, changed, bytes = 0, t, reached = 0;
  long peak = 0, kb, samples = 0;
  int pid;
  struct timespec tick = {0, 2000000};
  if (argc != 7) {
    fprintf(stderr, "usage: watch PID TARGET DIR STAMPS DEADLINE STALL\n");
    return 2;
  }
  pid = atoi(argv[1]);
  target = atoll(argv[2]);
  snprintf(status, sizeof status, "/proc/%d/status", pid);
  start = changed = now_us();
  deadline = start + atoll(argv[5]) * 1000000LL;
  stall = atoll(argv[6]) * 1000000LL;
  for (;;) {
    kb = rss_kb(status);
    if (kb < 0) break; /* the daemon is gone */
    if (kb > peak) peak = kb;
    samples++;
    bytes = out_bytes(argv[3]);
    t = now_us();
    if (bytes >= target) { reached = t; break; }
    if (bytes != last) { last = bytes; changed = t; }
    if (t > deadline) break;
    if (t - changed > stall && ended(argv[4])) break;
    nanosleep(&tick, NULL);
  }
  printf("%s %lld %lld %ld %ld\n", reached ? "done" : "incomplete", reached, bytes, peak, samples);
  return 0;
}
