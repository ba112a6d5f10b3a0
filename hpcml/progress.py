"""Progress of a long step, shown the way the output can show it.

On a terminal: a tqdm bar. Under mpiexec and Slurm stderr is a pipe or a file, where a bar
is a screen of carriage returns: there, a first line after every/3 seconds, then a line
every `every` seconds (and one at the end)
with the count done, the share, the rate, the elapsed time and the ETA:

    convert table.csv: 4,500,000/10,000,000 rows (45%)  912,000 rows/s  elapsed 0:05  ETA 0:06

Only the rank that is given `enabled=True` (rank 0) prints.
"""
import sys
import time


def hms(seconds):
    seconds = int(round(max(seconds, 0)))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    #: seconds between lines when `every` is not given (a job's --log-every sets it)
    default_every = 30.0

    def __init__(self, total, desc, unit="rows", enabled=True, every=None, stream=None,
                 tty=None):
        self.total, self.desc, self.unit = int(total), desc, unit
        every = Progress.default_every if every is None else every
        self.every, self.done, self.shown = float(every), 0, -1
        self.wait = self.every / 3  # the first line comes early: a short run shows its pace
        self.stream = stream if stream is not None else sys.stdout
        self.start = self.last = time.perf_counter()
        self.bar = None
        self.lines = enabled and self.every > 0
        tty = sys.stderr.isatty() if tty is None else tty
        if enabled and tty:
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, desc=desc, unit=unit, dynamic_ncols=True)
            self.lines = False

    def line(self):
        now = time.perf_counter()
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        return (f"{self.desc}: {self.done:,}/{self.total:,} {self.unit}{share}  "
                f"{rate:,.0f} {self.unit}/s  elapsed {hms(elapsed)}  ETA {hms(eta)}")

    def update(self, n=1):
        self.done += int(n)
        if self.bar is not None:
            self.bar.update(n)
        elif self.lines and time.perf_counter() - self.last >= self.wait:
            print(self.line(), file=self.stream, flush=True)
            self.last, self.shown, self.wait = time.perf_counter(), self.done, self.every

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.lines:
            if self.shown != self.done:  # the final count, unless just shown
                print(self.line(), file=self.stream, flush=True)
            self.lines = False

    def __enter__(self):
        return self

    def __exit__(self, etype, *exc):
        if etype is None:
            self.close()
        elif self.bar is not None:  # a failure: no closing line
            self.bar.close()
        return False
