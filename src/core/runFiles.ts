/**
 * Names of the files a training run writes into its output folder. Named
 * here, in the domain core, because the workspace scan finds runs by them
 * and the core never imports the training code.
 */

/** The run's events, one JSON object per line, so an editor can show the run after a reload. */
export const EVENTS_FILE = 'training-events.jsonl';

/** Which cubes the run trains on and which it holds out for validation, one CSV row per cube. */
export const SPLIT_FILE = 'training-split.csv';

/** The SLURM jobs submitted for the run, one JSON line per submission: a queued run has this before its events. */
export const SLURM_JOBS_FILE = 'slurm-jobs.jsonl';
