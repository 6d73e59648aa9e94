/**
 * `model ...`: sharing retrained networks. Each subcommand is one entry of
 * MODEL_SUBCOMMANDS (its usage line and its handler), so a new one is added
 * there and nowhere else.
 */
import * as path from 'node:path';
import { DataFileError } from '../core/errors';
import { checkModelCard, DEFAULT_CARD_LICENSE, writeModelCard } from '../sharing/modelCard';
import { CELLFINDER_MODELS, fetchCellfinderModel, fetchHubModel, HUB_ENDPOINT_ENV, isCellfinderModelName, MODEL_URL_ENV, parseHubRepo, type FetchedFile } from '../sharing/modelFetch';
import { parseArgs, UsageError } from './args';
import { EXPORT_USAGE, exportModelCommand, PUBLISH_USAGE, publishModelCommand } from './exportCommands';
import { progressPrinter } from './progress';

interface Io {
  out: (text: string) => void;
  err: (text: string) => void;
}

interface ModelSubcommand {
  usage: string;
  run: (argv: readonly string[], io: Io) => Promise<number>;
}

const MODEL_SUBCOMMANDS: Record<string, ModelSubcommand> = {
  card: {
    usage: `  model card <model file> [--run <run dir>] [-o <card.md>] [--license <id>] [--json]
  model card --check <card.md> [--json]
      The model card: Markdown with Hugging Face front matter beside the model
      (<model file>.card.md; train writes one for every model): network, starting
      model and its SHA-256, datasets with cube counts and labelling record, voxel
      sizes, --normalize-channels and its statistics, options and seed, split,
      final and best validation metrics, the confusion matrix of the run's
      evaluation.json (evaluate --json saved there), software versions, the
      SHA-256 of the model file. Without a run folder (--run, else the model's
      own folder) the card says only what the file says, and is marked so. An
      existing card is replaced only when it describes the same model bytes.
      --check: hashes the files a card lists and names any that changed (exit 1).`,
    run: cardCommand,
  },
  fetch: {
    usage: `  model fetch [--model resnet50_tv|resnet50_1ch] [--from <file|dir>] [--url <url>] [-o <dir>] [--json]
  model fetch hf://ORG/NAME [--from <dir>] [-o <dir>] [--json]
      Download a network, verify it, keep it only when it matches. Default:
      cellfinder's pre-trained network, from cellfinder's own URL with its
      SHA-256, into ~/.brainglobe/cellfinder/models/ under cellfinder's file name
      (both tools share it; --url or ${MODEL_URL_ENV} for a mirror, the hash
      stays cellfinder's). hf://ORG/NAME: every file of a Hugging Face model
      repository into ~/.brainglobe/cellfinder/models/hf/ORG/NAME/, each checked
      against the hash the Hub lists (${HUB_ENDPOINT_ENV} for a mirror). --from: a
      local copy (offline clusters), checked the same way. A file already there
      with other bytes is never replaced.`,
    run: fetchCommand,
  },
  export: { usage: EXPORT_USAGE, run: exportModelCommand },
  publish: { usage: PUBLISH_USAGE, run: publishModelCommand },
};

/** The usage text of every model subcommand, for the CLI's help. */
export const MODEL_USAGE = Object.values(MODEL_SUBCOMMANDS)
  .map((subcommand) => subcommand.usage)
  .join('\n');

export async function modelCommand(argv: readonly string[], io: Io): Promise<number> {
  const [sub, ...rest] = argv;
  const subcommand = sub === undefined ? undefined : MODEL_SUBCOMMANDS[sub];
  if (!subcommand) throw new UsageError(`unknown model command "${sub ?? ''}" (${Object.keys(MODEL_SUBCOMMANDS).join(', ')})`);
  return subcommand.run(rest, io);
}

async function cardCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parseArgs(argv, [
    { name: 'run', values: 1 },
    { name: 'output', short: 'o', values: 1 },
    { name: 'license', values: 1 },
    { name: 'check', values: 1 },
    { name: 'json', values: 0 },
  ]);
  const json = flags.has('json');
  const card = flags.get('check')?.[0];
  if (card !== undefined) {
    if (positionals.length || flags.has('run') || flags.has('output') || flags.has('license')) throw new UsageError('model card --check takes only the card (and --json)');
    const check = await checkModelCard(card);
    if (json) io.out(JSON.stringify(check, null, 2));
    else if (check.matches) io.out(`${check.card}: all ${check.files.length} file(s) match the card`);
    for (const file of check.files.filter((f) => f.status !== 'matches')) {
      const problem = file.status === 'missing' ? `is missing (the card ${check.card} lists it)` : `has SHA-256 ${file.actual}, the card ${check.card} says ${file.expected}: it changed after the card was written`;
      io.err(`error: ${new DataFileError(file.file, problem, 'Use the file the card describes, or write a new card for this one (model card MODEL -o NEW.md)').message}`);
    }
    return check.matches ? 0 : 1;
  }
  if (positionals.length !== 1) throw new UsageError('model card needs one model file (.keras, .weights.h5 or .h5), or --check <card.md>');
  const written = await writeModelCard(positionals[0], {
    run: flags.get('run')?.[0],
    output: flags.get('output')?.[0],
    license: flags.get('license')?.[0] ?? DEFAULT_CARD_LICENSE,
  });
  if (json) io.out(JSON.stringify(written));
  else io.out(`Model card written: ${written.card}${written.fromRun ? '' : ' (from the model file alone: no training run folder with it)'}`);
  return 0;
}

async function fetchCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parseArgs(argv, [
    { name: 'model', values: 1 },
    { name: 'from', values: 1 },
    { name: 'url', values: 1 },
    { name: 'output', short: 'o', values: 1 },
    { name: 'json', values: 0 },
  ]);
  if (positionals.length > 1) throw new UsageError(`unexpected argument ${positionals[1]}`);
  const printers = new Map<string, (done: number, total: number) => void>();
  const progress = (file: string, done: number, total: number | undefined) => {
    if (total === undefined) return;
    if (!printers.has(file)) printers.set(file, progressPrinter(io, `fetching ${file} (bytes)`));
    printers.get(file)?.(done, total);
  };
  const from = flags.get('from')?.[0];
  const output = flags.get('output')?.[0];
  let files: FetchedFile[];
  let where: string;
  if (positionals.length === 1) {
    if (flags.has('model') || flags.has('url')) throw new UsageError('--model and --url are for cellfinder\'s own networks, not hf:// repositories');
    const repo = parseHubRepo(positionals[0]);
    const fetched = await fetchHubModel(repo, { folder: output, from, onProgress: progress });
    files = fetched.files;
    where = `hf://${repo}${fetched.revision ? ` at revision ${fetched.revision}` : ''} in ${fetched.folder}`;
  } else {
    const name = flags.get('model')?.[0] ?? 'resnet50_tv';
    if (!isCellfinderModelName(name)) throw new UsageError(`--model must be one of ${Object.keys(CELLFINDER_MODELS).join(', ')}, got ${name}`);
    if (from !== undefined && flags.has('url')) throw new UsageError('give --from or --url, not both');
    files = [await fetchCellfinderModel({ name, folder: output, from, url: flags.get('url')?.[0], onProgress: progress })];
    where = `cellfinder's ${name} into ${path.dirname(files[0].file)}`;
  }
  if (flags.has('json')) {
    io.out(JSON.stringify({ files }, null, 2));
    return 0;
  }
  io.out(`Fetched ${where}:`);
  for (const file of files) io.out(`  ${file.file}: ${file.status}, SHA-256 ${file.sha256} (${file.verified === 'none known' ? 'no hash listed to check it against' : `matches the ${file.verified}`})`);
  return 0;
}
