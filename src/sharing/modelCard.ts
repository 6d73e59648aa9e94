/**
 * Model cards: what a retrained network was trained on and how well it did,
 * written beside the model file (`<model file>.card.md`) so that it travels
 * with it. Human-readable Markdown with YAML front matter laid out as the
 * Hugging Face Hub reads a model card (`library_name`, `license`, `tags`,
 * `metrics`, `model-index`), plus our own `cellfinder_retrain` key holding
 * the SHA-256 of every file the card describes, so a card that no longer
 * matches its files can be told (`checkModelCard`).
 *
 * Everything comes from files, never from memory of the session: the model
 * file itself (network depth, channels, Keras metadata), the run folder
 * (training-config.json, training-events.jsonl, evaluation.json), the
 * datasets its training.yaml files name (cube counts, channel statistics, the
 * provenance log, the voxel sizes of the candidate set labelled into them).
 * A model without a run folder gets a card from what the file alone says,
 * marked as such.
 *
 * Replacing a card: a card is replaced only when it is regenerated for the
 * same model bytes (its recorded SHA-256 of the model file equals the file's
 * now), or when the trainer has just replaced the model file itself (the old
 * card then describes a model that is gone). A card of other bytes is never
 * overwritten: it is the record of a model that may still exist elsewhere.
 */
import { createHash } from 'node:crypto';
import { createReadStream, promises as fs, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { strFromU8 } from 'fflate';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { exists, parseJsonLines, writeFileAtomic } from '../core/atomicFile';
import { PROVENANCE_LOG, summarizeTrainingYaml, type ProvenanceRecord } from '../core/dataset';
import { DataFileError } from '../core/errors';
import { NETWORK_VOXEL_SIZES } from '../core/cube';
import type { VoxelSizes } from '../core/extraction';
import { loadCandidateSet } from '../core/labelling';
import { EVENTS_FILE } from '../core/runFiles';
import { NO_BACKGROUND_CHANNEL } from '../core/trainingYaml';
import { packageRoot } from '../engine/engineLayout';
import type { ClassCounts, TrainingEvent } from '../training/events';
import type { Evaluation } from '../training/inference';
import { KERAS_VERSION } from '../training/kerasConfig';
import { describeModelFile, readZipMember, type ModelDescription } from '../training/modelFiles';
import { parameterCount, resnetSpec } from '../training/resnet';
import { TRAIN_CONFIG_FILE, type TrainConfig } from '../training/trainConfig';
import type { EpochMetrics } from '../training/trainer';
import { HUB_CARD_FILE } from './hubExport';
import { KERAS_MEMBERS } from './kerasArchive';

/** A model's card is `<model file name>.card.md` beside it: `model.keras.card.md` (unambiguous when a .keras and a .weights.h5 share a stem). */
export const MODEL_CARD_SUFFIX = '.card.md';

/**
 * `cellfinder-retrain evaluate --json` saved into the run folder: the card
 * takes the confusion matrix of this model from it.
 */
export const EVALUATION_FILE = 'evaluation.json';

/** The key of our machine-readable part of the front matter; the Hub shows unknown keys as they are. */
const CARD_KEY = 'cellfinder_retrain';
/** Bumped when the meaning of the `cellfinder_retrain` front matter changes. */
const CARD_FORMAT = 1;

/** cellfinder's own license, which also covers its pre-trained weights that most retraining starts from. */
export const DEFAULT_CARD_LICENSE = 'bsd-3-clause';

export function modelCardPath(modelFile: string): string {
  return `${modelFile}${MODEL_CARD_SUFFIX}`;
}

/**
 * The card that describes `modelFile`, if there is one: its own
 * `<model file>.card.md`, else, for the `model.weights.h5` of a Hub folder
 * (an export, or a fetched repository), the folder's README.md.
 */
export async function findModelCard(modelFile: string): Promise<string | undefined> {
  const ownCard = modelCardPath(modelFile);
  if (await exists(ownCard)) return ownCard;
  const folder = path.dirname(modelFile);
  const isHubFolder = path.basename(modelFile) === 'model.weights.h5' && (await Promise.all(KERAS_MEMBERS.map((member) => exists(path.join(folder, member))))).every(Boolean);
  const readme = path.join(folder, HUB_CARD_FILE);
  return isHubFolder && (await exists(readme)) ? readme : undefined;
}

export async function sha256OfFile(file: string): Promise<string> {
  const hash = createHash('sha256');
  try {
    for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  } catch (error) {
    throw new DataFileError(file, `cannot be read (${(error as Error).message})`, 'Check the path');
  }
  return hash.digest('hex');
}

type StartedEvent = Extract<TrainingEvent, { type: 'started' }>;

/** What a training run folder says about the run that wrote a model. */
export interface RunFacts {
  folder: string;
  /** The run's settings (training-config.json, or the trainer's own when it writes the card). */
  config?: Partial<TrainConfig>;
  /** The run's first `started` event: network, starting model, split. */
  started?: StartedEvent;
  /** One entry per epoch trained (a resumed epoch counted once, as finished). */
  history: EpochMetrics[];
  /** The engines the run trained on (several when resumed elsewhere). */
  backends: string[];
  /** This model's entry of the run's evaluation.json, when there is one. */
  evaluation?: Evaluation;
}

/**
 * The run in `folder` as its files record it: the events of its last start
 * from scratch (a folder trained into again holds the older run's events
 * before them) and its settings.
 */
export async function readRunFacts(folder: string, modelFile: string): Promise<RunFacts> {
  const eventsFile = path.join(folder, EVENTS_FILE);
  let text: string;
  try {
    text = await fs.readFile(eventsFile, 'utf8');
  } catch {
    throw new DataFileError(eventsFile, 'does not exist: this is not a training run folder', 'Give the folder that train wrote (-o), or leave out --run for a card from the model file alone');
  }
  const events = parseJsonLines<TrainingEvent>(text);
  const lastStart = events.map((event) => event.type === 'launched' && event.mode === 'train').lastIndexOf(true);
  const run = events.slice(Math.max(0, lastStart));
  const epochs = new Map<number, EpochMetrics>();
  for (const event of run) if (event.type === 'epoch') epochs.set(event.epoch, { epoch: event.epoch, loss: event.loss, accuracy: event.accuracy, valLoss: event.valLoss, valAccuracy: event.valAccuracy, learningRate: event.learningRate, seconds: event.seconds });
  const startedEvents = run.filter((event): event is StartedEvent => event.type === 'started');
  const configText = await fs.readFile(path.join(folder, TRAIN_CONFIG_FILE), 'utf8').catch(() => undefined);
  let config: Partial<TrainConfig> | undefined;
  try {
    config = configText === undefined ? undefined : (JSON.parse(configText) as Partial<TrainConfig>);
  } catch {
    config = undefined;
  }
  return {
    folder,
    config,
    started: startedEvents[0],
    history: [...epochs.values()].sort((a, b) => a.epoch - b.epoch),
    backends: [...new Set(startedEvents.map((event) => event.backend))],
    evaluation: await evaluationOf(folder, modelFile),
  };
}

/** This model's entry in the run's evaluation.json (the output of `evaluate --json`), matched by path. */
async function evaluationOf(folder: string, modelFile: string): Promise<Evaluation | undefined> {
  const text = await fs.readFile(path.join(folder, EVALUATION_FILE), 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new DataFileError(path.join(folder, EVALUATION_FILE), 'is not valid JSON', 'Save it again with cellfinder-retrain evaluate ... --json, or remove it');
  }
  const evaluations = (Array.isArray(parsed) ? parsed : [parsed]) as Evaluation[];
  const target = path.resolve(modelFile);
  return evaluations.find((e) => typeof e?.model === 'string' && Array.isArray(e.confusion) && [path.resolve(e.model), path.resolve(folder, e.model)].includes(target));
}

interface ProvenanceSummary {
  decisions: number;
  byAction: Record<string, number>;
  /** Signal volumes (or datasets merged in) the cubes came from. */
  sources: string[];
  /** Models whose predictions were shown while labelling: one per retraining round. */
  predictionModels: string[];
  first: string;
  last: string;
}

interface DatasetFacts {
  yamlFile: string;
  /** Why the dataset could not be read when the card was written (moved, deleted). */
  problem?: string;
  cells?: number;
  nonCells?: number;
  channelStatistics: Array<{ cubeDir: string; type: string; signal?: [number, number]; background?: [number, number] }>;
  provenance?: ProvenanceSummary;
  /**
   * The data voxel sizes its cubes were cut at, each once: from the
   * provenance log's add records, else (records written before they were
   * kept) the candidate set last labelled into it (its labelling.json).
   */
  voxelSizes: VoxelSizes[];
}

async function datasetFacts(yamlFile: string, workingDirectory: string | undefined): Promise<DatasetFacts> {
  let summary;
  try {
    summary = await summarizeTrainingYaml(yamlFile, workingDirectory);
  } catch (error) {
    return { yamlFile, problem: error instanceof DataFileError ? error.problem : (error as Error).message, channelStatistics: [], voxelSizes: [] };
  }
  const folder = path.dirname(summary.yamlFile);
  const channelStatistics = summary.entries.map(({ entry }) => ({
    cubeDir: entry.cubeDir,
    type: entry.type,
    signal: entry.signalMean !== undefined && entry.signalStd !== undefined ? ([entry.signalMean, entry.signalStd] as [number, number]) : undefined,
    background: entry.bgChannel !== NO_BACKGROUND_CHANNEL && entry.bgMean !== undefined && entry.bgStd !== undefined ? ([entry.bgMean, entry.bgStd] as [number, number]) : undefined,
  }));
  const records = parseJsonLines<ProvenanceRecord>(await fs.readFile(path.join(folder, PROVENANCE_LOG), 'utf8').catch(() => ''));
  const recorded = new Map(records.flatMap((record) => (record.action === 'add' && record.voxelSizes ? [[record.voxelSizes.join(','), record.voxelSizes] as const] : [])));
  const set = recorded.size ? undefined : await loadCandidateSet(folder).catch(() => undefined);
  return {
    yamlFile: summary.yamlFile,
    cells: summary.cells,
    nonCells: summary.nonCells,
    channelStatistics,
    provenance: provenanceSummary(records),
    voxelSizes: recorded.size ? [...recorded.values()] : set ? [set.voxelSizes ?? NETWORK_VOXEL_SIZES] : [],
  };
}

function provenanceSummary(records: ProvenanceRecord[]): ProvenanceSummary | undefined {
  if (records.length === 0) return undefined;
  const byAction: Record<string, number> = {};
  for (const record of records) byAction[record.action] = (byAction[record.action] ?? 0) + 1;
  const distinct = (values: Array<string | undefined>) => [...new Set(values.filter((v): v is string => typeof v === 'string' && v !== ''))];
  return {
    decisions: records.length,
    byAction,
    sources: distinct(records.map((r) => r.source)),
    predictionModels: distinct(records.map((r) => r.prediction?.model)),
    first: records[0].time,
    last: records[records.length - 1].time,
  };
}

interface CardFile {
  /** Relative to the card's folder, with forward slashes. */
  path: string;
  sha256: string;
  bytes: number;
}

interface ModelFacts extends ModelDescription {
  file: string;
  parameters: number;
  /** From a .keras archive's metadata.json. */
  kerasVersion?: string;
  savedAt?: string;
}

async function modelFacts(file: string): Promise<ModelFacts> {
  const description = await describeModelFile(file);
  const facts: ModelFacts = { ...description, file, parameters: parameterCount(resnetSpec(description.depth, description.channels)) };
  if (description.format === 'keras') {
    const metadata = await readZipMember(file, 'metadata.json').catch(() => undefined);
    if (metadata) {
      try {
        const parsed = JSON.parse(strFromU8(metadata)) as { keras_version?: string; date_saved?: string };
        facts.kerasVersion = parsed.keras_version;
        facts.savedAt = parsed.date_saved;
      } catch {
        // A metadata.json Keras itself would refuse; the card leaves it out.
      }
    }
  }
  return facts;
}

function packageVersion(): string {
  try {
    return (JSON.parse(readFileSync(path.join(packageRoot(), 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

export interface ModelCardOptions {
  /** Where to write the card; default `modelCardPath(modelFile)`. */
  output?: string;
  /**
   * The run that wrote the model: its facts (the trainer's own), its folder,
   * or undefined to use the model's folder when that is a run folder, and
   * otherwise write a card from the file alone.
   */
  run?: RunFacts | string;
  /** Hugging Face license id for the front matter; default cellfinder's. */
  license?: string;
  /** 'always': the caller has just replaced the model file itself (the trainer). Default 'same-model'. */
  replace?: 'always' | 'same-model';
}

/** The card as text, for a card file or a Hub folder's README.md. */
export async function buildModelCard(modelFile: string, options: ModelCardOptions = {}): Promise<string> {
  return (await composeModelCard(modelFile, options)).text;
}

async function composeModelCard(modelFile: string, options: ModelCardOptions): Promise<{ text: string; facts: CardFacts }> {
  const file = path.resolve(modelFile);
  const cardFolder = path.dirname(path.resolve(options.output ?? modelCardPath(file)));
  const model = await modelFacts(file);
  const run = typeof options.run === 'object' ? options.run : await runFor(file, options.run);
  const datasets = run?.config?.yamlFiles ? await Promise.all(run.config.yamlFiles.map((yaml) => datasetFacts(yaml, run.config?.workingDirectory))) : [];
  const start = run?.started?.start?.modelFile;
  const startHash = start && (await exists(start)) ? await sha256OfFile(start) : undefined;
  const files: CardFile[] = [{ path: path.relative(cardFolder, file).split(path.sep).join('/'), sha256: await sha256OfFile(file), bytes: (await fs.stat(file)).size }];
  const facts: CardFacts = { model, run, datasets, start: start ? { file: start, sha256: startHash } : undefined, files, license: options.license ?? DEFAULT_CARD_LICENSE, written: new Date().toISOString(), version: packageVersion(), cardFolder };
  return { text: `---\n${stringifyYaml(frontMatter(facts), { lineWidth: 0 })}---\n\n${cardBody(facts)}`, facts };
}

async function runFor(file: string, folder: string | undefined): Promise<RunFacts | undefined> {
  if (folder !== undefined) return readRunFacts(path.resolve(folder), file);
  return (await exists(path.join(path.dirname(file), EVENTS_FILE))) ? readRunFacts(path.dirname(file), file) : undefined;
}

/**
 * Writes the model's card (atomically) and returns where. An existing card
 * is replaced only as the module header says; otherwise the error names it
 * and nothing is written.
 */
export async function writeModelCard(modelFile: string, options: ModelCardOptions = {}): Promise<{ card: string; fromRun: boolean }> {
  const card = path.resolve(options.output ?? modelCardPath(path.resolve(modelFile)));
  const { text, facts } = await composeModelCard(modelFile, { ...options, output: card });
  const replacing = await exists(card);
  if (replacing && options.replace !== 'always') {
    const recorded = await recordedModelHash(card);
    const current = facts.files[0].sha256;
    if (recorded !== current) {
      throw new DataFileError(
        card,
        recorded === undefined ? 'already exists and is not a model card written by cellfinder-retrain' : `already exists and describes other model bytes (SHA-256 ${recorded}; the model's is now ${current})`,
        'Nothing was overwritten; write the new card elsewhere with -o, or remove the old one if it is no longer wanted',
      );
    }
  }
  await writeFileAtomic(card, text, { overwrite: replacing });
  return { card, fromRun: facts.run !== undefined };
}

async function recordedModelHash(card: string): Promise<string | undefined> {
  const text = await fs.readFile(card, 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  try {
    return readFrontMatter(text, card)?.files[0]?.sha256;
  } catch {
    return undefined;
  }
}

const FROM_RUN = 'training run';
const FROM_FILE_ALONE = 'model file alone';

interface CardFacts {
  model: ModelFacts;
  run?: RunFacts;
  datasets: DatasetFacts[];
  start?: { file: string; sha256?: string };
  files: CardFile[];
  license: string;
  written: string;
  version: string;
  cardFolder: string;
}

function bestEpoch(history: readonly EpochMetrics[]): EpochMetrics | undefined {
  const validated = history.filter((m) => m.valLoss !== undefined);
  // The later epoch on a tie, being trained longer (as the trainer's --keep-checkpoints ranks them).
  return validated.reduce<EpochMetrics | undefined>((best, m) => (best === undefined || (m.valLoss as number) <= (best.valLoss as number) ? m : best), undefined);
}

/** The checkpoint's epoch (1-based) when the model file is one of the run's per-epoch checkpoints. */
function checkpointEpoch(file: string): number | undefined {
  const match = /^(?:model|weight)-epoch\.(\d+)/.exec(path.basename(file));
  return match ? Number(match[1]) : undefined;
}

function frontMatter(facts: CardFacts): Record<string, unknown> {
  const { model, run } = facts;
  const name = path.basename(model.file);
  const final = run?.history[run.history.length - 1];
  const best = run ? bestEpoch(run.history) : undefined;
  const metrics: Array<{ type: string; value: number; name: string }> = [];
  if (final?.valAccuracy !== undefined) metrics.push({ type: 'accuracy', value: round(final.valAccuracy), name: `Validation accuracy, final epoch (${final.epoch + 1})` });
  if (best?.valAccuracy !== undefined && best !== final) metrics.push({ type: 'accuracy', value: round(best.valAccuracy), name: `Validation accuracy, best epoch (${best.epoch + 1}, lowest validation loss)` });
  const results: unknown[] = [];
  const task = { type: 'image-classification', name: 'Cell / non-cell classification of 3D cubes around cellfinder candidates' };
  if (metrics.length) results.push({ task, dataset: { type: 'cellfinder-cubes', name: 'Validation cubes of the training run', split: 'validation' }, metrics });
  if (run?.evaluation) {
    results.push({ task, dataset: { type: 'cellfinder-cubes', name: `Cubes evaluated with cellfinder-retrain evaluate (${run.evaluation.samples})` }, metrics: [{ type: 'accuracy', value: round(run.evaluation.accuracy), name: 'Accuracy (evaluate)' }] });
  }
  return {
    library_name: 'keras',
    license: facts.license,
    tags: ['cellfinder', 'brainglobe', 'keras', 'resnet', '3d', 'cell-classification', 'microscopy', 'neuroscience'],
    ...(results.length ? { metrics: ['accuracy'], 'model-index': [{ name, results }] } : {}),
    [CARD_KEY]: {
      card_format: CARD_FORMAT,
      written: facts.written,
      written_by: `cellfinder-retrain ${facts.version}`,
      source: run ? FROM_RUN : FROM_FILE_ALONE,
      ...(run ? { run_folder: path.relative(facts.cardFolder, run.folder).split(path.sep).join('/') || '.' } : {}),
      network: { architecture: `ResNet-${model.depth}`, network_depth: model.depth, input_shape: [50, 50, 20, model.channels], channels: channelNames(model.channels), output: ['non_cell', 'cell'], format: model.format },
      files: facts.files,
    },
  };
}

function round(value: number): number {
  return Number(value.toFixed(4));
}

function channelNames(channels: number): string[] {
  return channels === 1 ? ['signal'] : ['signal', 'background'];
}

const FORMAT_NAMES: Record<ModelDescription['format'], string> = {
  keras: 'Keras 3 `.keras` model (architecture, weights and optimiser state; `keras.saving.load_model`)',
  'weights.h5': 'Keras 3 `.weights.h5` weights (load into cellfinder\'s network with `load_weights`)',
  'legacy.h5': 'Keras 2 `.h5` weights (loaded by layer order)',
};

function cardBody(facts: CardFacts): string {
  const { model, run } = facts;
  const name = path.basename(model.file);
  const lines: string[] = [];
  const add = (...more: string[]) => lines.push(...more);
  add(`# Model card for ${name}`, '');
  add(`A cellfinder cell classifier: BrainGlobe cellfinder's 3D ResNet-${model.depth}, which sorts the candidate points of a cell detection into cells and non-cells from a 50 x 50 x 20 voxel cube around each, ${model.channels === 1 ? 'signal channel only' : 'signal and background channels'}.`, '');
  if (run) add(`Written by cellfinder-retrain ${facts.version} on ${facts.written} from the training run in \`${run.folder}\`.`, '');
  else add(`**Written from the model file alone** by cellfinder-retrain ${facts.version} on ${facts.written}: no training run folder was found with it, so its training data, options and metrics are not known. Only what the file itself says is given below.`, '');

  add('## Model Details', '', '### Model Description', '');
  add(`- **Model type:** cellfinder's cube classification network, ResNet-${model.depth} (${model.parameters.toLocaleString('en')} parameters)`);
  add(`- **Input:** batch x 50 (y) x 50 (x) x 20 (z) x ${model.channels} (${channelNames(model.channels).join(', ')}), float32, cubes at the network's voxel size of 5 x 1 x 1 µm (z, y, x)`);
  add('- **Output:** softmax over [non-cell, cell] (cellfinder type 1, type 2)');
  add(`- **File format:** ${FORMAT_NAMES[model.format]}${model.kerasVersion ? `, saved as Keras ${model.kerasVersion}${model.savedAt ? ` on ${model.savedAt}` : ''}` : ''}`);
  if (run) add(`- **Finetuned from:** ${facts.start ? `\`${facts.start.file}\` (SHA-256 ${facts.start.sha256 ?? 'unknown: the file is no longer there'})` : "none: cellfinder's random initialisation"}`);
  add(`- **License:** ${facts.license}`, '');

  add('## Uses', '');
  add(`Classify cellfinder's candidates with it: \`cellfinder --trained-model ${name}\` (or \`--model-weights\` for weights files), napari's cellfinder plugin, or \`cellfinder-retrain classify --trained-model ${name}\`. It can also be the starting point of another retraining (\`cellfinder-retrain train --trained-model ${name}\`).`);
  if (run?.config?.normalizeChannels) add('', '**Trained on normalised channels** (`--normalize-channels`): classify with `--normalize-channels` too, or its probabilities mean nothing.');
  add('');
  add('## Bias, Risks, and Limitations', '');
  add('The network learns the cells of the microscope, staining, brain regions and labeller of its training cubes. Before relying on it for other data, label a few hundred of that data\'s candidates and check it there (`cellfinder-retrain evaluate`).', '');

  add('## Training Details', '');
  if (!run) add('Not known: the model file does not record its training.', '');
  else {
    add('### Training Data', '');
    if (facts.datasets.length === 0) add('The run does not record its datasets (no training-config.json in its folder).', '');
    else {
      add('| training.yaml | cells | non-cells | cut at voxel size (z, y, x) µm | labelling record |', '|---|---|---|---|---|');
      for (const d of facts.datasets) {
        if (d.problem) add(`| \`${d.yamlFile}\` | ? | ? | ? | could not be read when the card was written: ${escapeCell(d.problem)} |`);
        else add(`| \`${d.yamlFile}\` | ${d.cells} | ${d.nonCells} | ${voxelSizeText(d.voxelSizes)} | ${escapeCell(provenanceText(d.provenance))} |`);
      }
      add('');
    }
    const split = run.started?.split;
    if (split) add(`Split (\`training-split.csv\` in the run folder lists every cube): training ${countsText(split.training)}, validation ${countsText(split.validation)}.`, '');
    else if (run.started) add(`Split: ${run.started.samples.training} training and ${run.started.samples.validation} validation cubes.`, '');

    add('### Training Procedure', '', '#### Preprocessing', '');
    if (run.config?.normalizeChannels) {
      add('Channels normalised (`--normalize-channels`): each cube channel became (x - mean) / std with the statistics of its training.yaml entry:', '');
      for (const d of facts.datasets) for (const s of d.channelStatistics) add(`- \`${s.cubeDir}\` (${s.type}): signal ${statsText(s.signal)}${model.channels > 1 ? `, background ${statsText(s.background)}` : ''}`);
      add('');
    } else add('No channel normalisation (cellfinder\'s default): cubes as cut, in float32.', '');

    add('#### Training Hyperparameters', '');
    add('| option | value |', '|---|---|');
    for (const [option, value] of hyperparameters(run)) add(`| ${option} | ${value} |`);
    add('');
  }

  add('## Evaluation', '');
  if (!run) add('Not known: the model file does not record any.', '');
  else {
    const final = run.history[run.history.length - 1];
    const best = bestEpoch(run.history);
    const checkpoint = checkpointEpoch(model.file);
    if (checkpoint !== undefined) {
      const own = run.history.find((m) => m.epoch === checkpoint - 1);
      add(`This file is the run's checkpoint after epoch ${checkpoint}${own ? `: ${metricsText(own)}` : ''}.`, '');
    }
    if (!final) add('The run recorded no finished epoch.', '');
    else {
      add(`- **Final epoch (${final.epoch + 1} of ${run.config?.epochs ?? run.started?.epochs ?? '?'}):** ${metricsText(final)}`);
      if (best) add(`- **Best epoch by validation loss (${best.epoch + 1}):** ${metricsText(best)}`);
      if (final.valLoss === undefined) add('- No validation cubes (--test-fraction 0): no validation metrics.');
      add('');
    }
    if (run.evaluation) {
      const e = run.evaluation;
      add(`### Confusion matrix (\`cellfinder-retrain evaluate\`, ${e.samples} cubes, accuracy ${(100 * e.accuracy).toFixed(1)}%)`, '');
      add('| labelled \\ predicted | non-cell | cell |', '|---|---|---|');
      add(`| non-cell | ${e.confusion[0][0]} | ${e.confusion[0][1]} |`, `| cell | ${e.confusion[1][0]} | ${e.confusion[1][1]} |`, '');
      add(`Cell precision ${percent(e.cell.precision)}, recall ${percent(e.cell.recall)}; non-cell precision ${percent(e.nonCell.precision)}, recall ${percent(e.nonCell.recall)}.`, '');
    } else add(`No \`${EVALUATION_FILE}\` in the run folder: save \`cellfinder-retrain evaluate --trained-model ${name} -y <held-out training.yaml> --json\` there and write the card again for a confusion matrix.`, '');
  }

  add('## Technical Specifications', '', '### Model Architecture and Objective', '');
  add(`cellfinder's ResNet-${model.depth} (\`cellfinder/core/classify/resnet.py\`): 3D convolutions, batch normalisation over axis 3, global average pooling and a 2-way softmax; categorical cross-entropy, Adam.`, '');
  add('### Software', '');
  add(`- cellfinder-retrain ${facts.version}`);
  add(`- Model files written in the Keras ${KERAS_VERSION} format${model.kerasVersion && model.kerasVersion !== KERAS_VERSION ? ` (this file says Keras ${model.kerasVersion})` : ''}`);
  if (run?.backends.length) add(`- Training engine: ${run.backends.join(', ')}`);
  add('');

  add('## Files', '');
  add('| file | bytes | SHA-256 |', '|---|---|---|');
  for (const f of facts.files) add(`| \`${f.path}\` | ${f.bytes} | \`${f.sha256}\` |`);
  add('', `Check that the files are still the ones described: \`cellfinder-retrain model card --check ${path.basename(modelCardPath(model.file))}\`.`, '');
  return lines.join('\n');
}

function escapeCell(text: string): string {
  return text.replace(/\|/g, '\\|').replace(/\n/g, ' ');
}

function countsText(counts: ClassCounts): string {
  return `${counts.cells} cells + ${counts.nonCells} non-cells`;
}

function percent(value: number): string {
  return `${(100 * value).toFixed(1)}%`;
}

function statsText(stats: [number, number] | undefined): string {
  return stats ? `mean ${stats[0]}, std ${stats[1]}` : 'no statistics in the YAML';
}

function voxelSizeText(sizes: DatasetFacts['voxelSizes']): string {
  if (sizes.length === 0) return 'not recorded';
  return sizes.map((size) => (size.every((value, axis) => value === NETWORK_VOXEL_SIZES[axis]) ? '5, 1, 1 (no rescaling)' : `${size.join(', ')} (rescaled to 5, 1, 1)`)).join('; ');
}

function provenanceText(provenance: ProvenanceSummary | undefined): string {
  if (!provenance) return 'no provenance log (cubes not labelled with cellfinder-retrain)';
  const actions = Object.entries(provenance.byAction).map(([action, count]) => `${count} ${action}`).join(', ');
  const rounds = provenance.predictionModels.length ? `; ${provenance.predictionModels.length} model(s) guided the labelling (${provenance.predictionModels.map((m) => path.basename(m)).join(', ')})` : '';
  return `${provenance.decisions} decisions (${actions}) from ${provenance.first.slice(0, 10)} to ${provenance.last.slice(0, 10)}; ${provenance.sources.length} source(s)${rounds}; labeller not recorded`;
}

function metricsText(m: EpochMetrics): string {
  const validation = m.valLoss === undefined ? '' : `, validation loss ${m.valLoss.toFixed(4)}, validation accuracy ${percent(m.valAccuracy as number)}`;
  return `training loss ${m.loss.toFixed(4)}, accuracy ${percent(m.accuracy)}${validation}`;
}

function hyperparameters(run: RunFacts): Array<[string, string]> {
  const c = run.config ?? {};
  const start = run.started?.start;
  const rows: Array<[string, string | number | boolean | undefined]> = [
    ['--network-depth', c.networkDepth ?? run.started?.model.depth],
    ['--epochs', c.epochs ?? run.started?.epochs],
    ['--batch-size', c.batchSize],
    ['--learning-rate (at the start)', start ? `${start.learningRate} (${start.learningRateFrom === 'option' ? '--learning-rate' : "from the starting model's optimiser"})` : c.learningRate],
    ['optimiser', start ? (start.optimizer.state === 'fresh' ? 'a fresh Adam' : `Adam restored at iteration ${start.optimizer.iterations}`) : undefined],
    ['--test-fraction', c.testFraction],
    ['--stratified-split', c.stratifiedSplit],
    ['--balanced', c.balancedSampling],
    ['augmentation', c.augment === undefined ? undefined : c.augment ? `likelihood ${c.augmentLikelihood}, affine ${c.affineMode}` : 'none (--no-augment)'],
    ['--lr-schedule', c.lrSchedule?.length ? `${c.lrSchedule.join(', ')} (x ${c.lrMultiplier})` : undefined],
    ['--normalize-channels', c.normalizeChannels],
    ['--seed', c.seed === undefined ? 'none (not reproducible)' : c.seed],
  ];
  return rows.filter(([, value]) => value !== undefined).map(([option, value]) => [option, String(value)]);
}

// ---------------------------------------------------------------- checking

interface RecordedCard {
  files: CardFile[];
}

/** The `cellfinder_retrain` part of a card's front matter, or undefined when the text has none. */
const FRONT_MATTER = /^---\r?\n([\s\S]*?)\r?\n---\r?\n/;

/**
 * The card's Markdown without its front matter: what a reader is shown. The
 * front matter is for the Hub and for `--check`; VS Code's preview shows it
 * as a table of raw YAML in newer versions (setting markdown.preview.frontMatter),
 * where the nested hashes and model-index crowd out the card itself.
 */
export function cardWithoutFrontMatter(text: string): string {
  return text.replace(FRONT_MATTER, '').replace(/^\s+/, '');
}

function readFrontMatter(text: string, card: string): RecordedCard | undefined {
  const match = FRONT_MATTER.exec(text);
  if (!match) return undefined;
  let data: unknown;
  try {
    data = parseYaml(match[1]);
  } catch (error) {
    throw new DataFileError(card, `has front matter that is not valid YAML (${(error as Error).message})`, 'Write the card again (cellfinder-retrain model card MODEL)');
  }
  const ours = (data as Record<string, unknown> | null)?.[CARD_KEY] as { files?: unknown } | undefined;
  if (!ours || !Array.isArray(ours.files)) return undefined;
  const files = ours.files.filter((f): f is CardFile => typeof f?.path === 'string' && typeof f?.sha256 === 'string');
  return { files };
}

export interface CardCheck {
  card: string;
  files: Array<{ file: string; expected: string; actual?: string; status: 'matches' | 'differs' | 'missing' }>;
  matches: boolean;
}

/** Hashes every file the card lists (paths relative to the card) and says which ones no longer match it. */
export async function checkModelCard(card: string): Promise<CardCheck> {
  const cardFile = path.resolve(card);
  let text: string;
  try {
    text = await fs.readFile(cardFile, 'utf8');
  } catch {
    throw new DataFileError(cardFile, 'cannot be read', 'Check the path of the model card');
  }
  const recorded = readFrontMatter(text, cardFile);
  if (!recorded || recorded.files.length === 0) throw new DataFileError(cardFile, `is not a model card written by cellfinder-retrain (no ${CARD_KEY}.files in its front matter)`, 'Give a .card.md that cellfinder-retrain wrote');
  const files: CardCheck['files'] = [];
  for (const entry of recorded.files) {
    const file = path.resolve(path.dirname(cardFile), entry.path);
    if (!(await exists(file))) {
      files.push({ file, expected: entry.sha256, status: 'missing' });
      continue;
    }
    const actual = await sha256OfFile(file);
    files.push({ file, expected: entry.sha256, actual, status: actual === entry.sha256 ? 'matches' : 'differs' });
  }
  return { card: cardFile, files, matches: files.every((f) => f.status === 'matches') };
}
