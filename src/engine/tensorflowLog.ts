/**
 * Keeping TensorFlow's informational log lines off the user's terminal while
 * its warnings and errors still reach it.
 *
 * TF_CPP_MIN_LOG_LEVEL=1 (set before the library loads: by the loader for its
 * own process, and in the environment of every process we start) hides INFO
 * from TensorFlow's own logging, e.g. "This TensorFlow binary is optimized to
 * use available CPU instructions...". TensorFlow 2.21 writes a few lines
 * through Abseil's logging while the library loads, before anything can
 * configure it, and no environment variable reaches those: "I0000 ...
 * port.cc:153] oneDNN custom operations are on...", after Abseil's banner
 * "WARNING: All log messages before absl::InitializeLog() is called are
 * written to STDERR" (which is printed before the first such line, whatever
 * its level, so it says nothing itself). A process that loads TensorFlow
 * therefore runs as a child whose stderr is relayed without those lines
 * (cli/main.ts starts every command that loads TensorFlow so, through
 * runInChild in cli/trainCommands.ts); a warning ("W0000 ...") or error
 * ("E0000 ...") passes. Everything passes when the user asks for INFO with
 * TF_CPP_MIN_LOG_LEVEL=0. The training worker the editor starts writes
 * straight into its run's worker.log, where the oneDNN line stays.
 */

export const TF_LOG_LEVEL_ENV = 'TF_CPP_MIN_LOG_LEVEL';
/** 1: warnings and errors; INFO (0) is hidden. */
export const TF_LOG_LEVEL = '1';

/** `env` with TensorFlow's log level set, unless the user chose one. */
export function withTensorFlowLogLevel(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return { ...env, [TF_LOG_LEVEL_ENV]: env[TF_LOG_LEVEL_ENV] ?? TF_LOG_LEVEL };
}

/** An Abseil/TensorFlow INFO line: severity I and MMDD, time (before Abseil is set up: 00:00:<seconds since 1970>), thread, file:line]. */
const INFO_LINE = /^I\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\s\]]+:\d+\] /;
const ABSL_BANNER = 'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR';

/** Whether a line of a child's stderr is TensorFlow INFO that `env`'s log level asks to hide. */
export function isHiddenTensorFlowLine(line: string, env: NodeJS.ProcessEnv): boolean {
  if (Number(env[TF_LOG_LEVEL_ENV] ?? TF_LOG_LEVEL) < 1) return false;
  return INFO_LINE.test(line) || line.trim() === ABSL_BANNER;
}
