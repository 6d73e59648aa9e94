/** Progress lines of long CLI jobs, on stderr, and stopping them with Ctrl-C, SIGTERM or SLURM's time-limit warning. */
import { TIME_LIMIT_SIGNAL } from '../cluster/slurm';

/** Signals that stop a job after the batch in flight, resumably: Ctrl-C, kill or scancel (SIGTERM), SLURM's warning before the time limit. */
export const STOP_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', `SIG${TIME_LIMIT_SIGNAL}`];

/**
 * "label: done/total (percent), about N s left", at most once per percent;
 * the estimate from this run's own pace (work an earlier, interrupted run
 * did is counted as done, not as speed).
 */
export function progressPrinter(io: { err: (text: string) => void }, label: string): (done: number, total: number) => void {
  let started: { time: number; done: number } | undefined;
  let lastPercent = -1;
  return (done, total) => {
    started ??= { time: Date.now(), done };
    const percent = total === 0 ? 100 : Math.floor((100 * done) / total);
    if (percent === lastPercent && done < total) return;
    lastPercent = percent;
    const rate = (done - started.done) / ((Date.now() - started.time) / 1000);
    const left = done > started.done && rate > 0 ? `, about ${Math.ceil((total - done) / rate)} s left` : '';
    io.err(`${label}: ${done}/${total} (${percent}%${left})`);
  };
}

/**
 * An AbortSignal that any of STOP_SIGNALS fires, saying `message` at once;
 * `release` removes the handlers when the job is over.
 */
export function stopOnSignals(io: { err: (text: string) => void }, message: string): { signal: AbortSignal; release: () => void } {
  const abort = new AbortController();
  const stop = () => {
    abort.abort();
    io.err(message);
  };
  for (const signal of STOP_SIGNALS) process.once(signal, stop);
  return {
    signal: abort.signal,
    release: () => {
      for (const signal of STOP_SIGNALS) process.removeListener(signal, stop);
    },
  };
}
