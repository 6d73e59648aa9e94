/**
 * `npm run bench -- scale`: the labelling and candidate steps on data of a
 * whole brain's size, made here: two channels of 4000x5000 uint16 planes
 * (120 by default, CELLFINDER_SCALE_PLANES), with a bright blob at each of
 * 5,000 candidates so the cubes are not empty, a 5,000-candidate and a
 * 1,000,000-candidate Cell Counter XML. Each step runs in its own process,
 * through the code the editor and the CLI use, and reports its peak RSS.
 * Everything written is removed at the end (CELLFINDER_SCALE_KEEP=1 keeps it
 * for the next run, in CELLFINDER_SCALE_DIR or the temporary folder).
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, promises as fs, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { formatCellCounterXml, readCellCounterXml } from '../src/core/cellCounterXml';
import { cubeFileName, encodeCube, CUBE_VOXELS, type Point3 } from '../src/core/cube';
import { TrainingDataset } from '../src/core/dataset';
import { cutCube, extractCubes, planExtraction, type ExtractionPlan } from '../src/core/extraction';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { channelStatistics, sampledPlanes } from '../src/core/channelStatistics';
import { cacheCandidates, LabellingSession, saveCandidateSet, type Candidate } from '../src/core/labelling';
import { loadTensorFlow } from '../src/engine/backend';
import { writeKerasModel } from '../src/training/modelFiles';
import { initialWeights, resnetSpec } from '../src/training/resnet';
import { launchBrowser } from '../test/webview/harness';
import { openLabellingPage } from './labellingBench';
import { seededRandom } from '../src/core/random';
import { encodeStack, stackLayout } from '../src/core/tiffWriter';
import { openChannels, type Volume } from '../src/core/volume';

const WIDTH = 5000;
const HEIGHT = 4000;
const PLANES = Number(process.env.CELLFINDER_SCALE_PLANES ?? 120);
const CANDIDATES = 5000;
/** Planes of the multi-page variant: 100 of 4000x5000 uint16 are 4.0 GB, under classic TIFF's 4 GiB. */
const STACK_PLANES = Math.min(PLANES, 100);
const LARGE_XML = 1_000_000;
const LABELLED_ALREADY = 5000;
const RANDOM_VISITS = 200;
const DECISIONS = 100;
const PAGE_PRESSES = 100;
/** A fast triage of clear cases. */
const PAGE_THINK_MS = 300;

interface StepResult {
  step: string;
  figures: string;
  maxRssMiB: number;
}

function random(seed: number): () => number {
  const source = seededRandom(seed);
  return () => source.next();
}

function candidates(): Array<{ x: number; y: number; z: number; type: number }> {
  const next = random(7);
  return Array.from({ length: CANDIDATES }, () => ({ x: Math.floor(60 + next() * (WIDTH - 120)), y: Math.floor(60 + next() * (HEIGHT - 120)), z: Math.floor(12 + next() * (PLANES - 24)), type: 1 }));
}

async function makeData(work: string): Promise<void> {
  if (existsSync(path.join(work, 'done'))) return;
  await fs.mkdir(work, { recursive: true });
  const points = candidates();
  await fs.writeFile(path.join(work, 'candidates.xml'), formatCellCounterXml(points).text);
  const next = random(11);
  const many = Array.from({ length: LARGE_XML }, () => ({ x: 1 + Math.floor(next() * WIDTH), y: 1 + Math.floor(next() * HEIGHT), z: 1 + Math.floor(next() * PLANES), type: 1 }));
  await fs.writeFile(path.join(work, 'candidates-1m.xml'), formatCellCounterXml(many).text);
  const byPlane = new Map<number, typeof points>();
  for (const point of points) for (let z = point.z - 3; z <= point.z + 3; z++) byPlane.set(z, [...(byPlane.get(z) ?? []), point]);
  const plane = new Uint16Array(WIDTH * HEIGHT);
  for (const channel of ['signal', 'background']) {
    await fs.mkdir(path.join(work, channel), { recursive: true });
    for (let z = 0; z < PLANES; z++) {
      // Noise of 100-163 from an integer LCG (Math.imul keeps it exact).
      let noise = z * 7919 + (channel === 'signal' ? 1 : 2);
      for (let i = 0; i < plane.length; i++) plane[i] = 100 + ((noise = (Math.imul(noise, 1103515245) + 12345) | 0) >>> 26);
      for (const point of byPlane.get(z) ?? []) {
        const bright = (channel === 'signal' ? 3000 : 600) / (1 + Math.abs(z - point.z));
        for (let y = point.y - 4; y <= point.y + 4; y++) for (let x = point.x - 4; x <= point.x + 4; x++) plane[y * WIDTH + x] += bright;
      }
      await fs.writeFile(path.join(work, channel, `${channel}_${String(z).padStart(4, '0')}.tif`), encodeStack(plane, 1, HEIGHT, WIDTH));
    }
  }
  // The multi-page variant: the first STACK_PLANES planes of each channel as one TIFF (classic TIFF stays under 4 GiB).
  const layout = stackLayout('uint16', STACK_PLANES, HEIGHT, WIDTH);
  for (const channel of ['signal', 'background']) {
    const stack = await fs.open(path.join(work, `${channel}-stack.tif`), 'w');
    await stack.write(layout.header);
    const planes = (await fs.readdir(path.join(work, channel))).sort().slice(0, STACK_PLANES);
    // Each plane file is one page of our own layout: its pixels follow the 8-byte header.
    for (const name of planes) await stack.write((await fs.readFile(path.join(work, channel, name))).subarray(8, 8 + WIDTH * HEIGHT * 2));
    await stack.write(layout.tail);
    await stack.close();
  }
  await fs.writeFile(path.join(work, 'done'), '');
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function spread(values: number[]): string {
  return `p50 ${percentile(values, 50).toFixed(1)} ms, p95 ${percentile(values, 95).toFixed(1)} ms, max ${Math.max(...values).toFixed(1)} ms`;
}

function since(start: bigint): number {
  return Number(process.hrtime.bigint() - start) / 1e6;
}

function report(step: string, figures: string): void {
  process.stdout.write(`${JSON.stringify({ step, figures, maxRssMiB: process.resourceUsage().maxRSS / 1024 } satisfies StepResult)}\n`);
}

async function xmlStep(work: string): Promise<void> {
  const start = process.hrtime.bigint();
  const { points } = await readCellCounterXml(path.join(work, 'candidates-1m.xml'));
  report('read a 1,000,000-candidate Cell Counter XML', `${points.length} points in ${(since(start) / 1000).toFixed(2)} s`);
}

/** Opens the two channels and times one pass of extraction over the 5,000 candidates; the caller closes the volumes. */
async function onePass(work: string, signal: string, background: string, step: string): Promise<{ volumes: Volume[]; plan: ExtractionPlan<Point3> }> {
  const volumes = await openChannels(path.join(work, signal), path.join(work, background));
  const { points } = await readCellCounterXml(path.join(work, 'candidates.xml'));
  const plan = planExtraction({ points, channels: volumes });
  const start = process.hrtime.bigint();
  let cubes = 0;
  for await (const cube of extractCubes(plan, volumes)) cubes += cube.channels.length > 0 ? 1 : 0;
  const seconds = since(start) / 1000;
  report(step, `${cubes} candidates in ${seconds.toFixed(1)} s: ${(cubes / seconds).toFixed(0)} candidates/s`);
  return { volumes, plan };
}

async function extractionStep(work: string): Promise<void> {
  const { volumes } = await onePass(work, 'signal', 'background', 'cut every candidate\'s cubes in one z-ordered pass (extraction; what a cache sweep runs)');
  await Promise.all(volumes.map((volume) => volume.close()));
}

/** Host work (cube + context) for RANDOM_VISITS candidates drawn at random with `seed`, in ms each. */
async function randomVisits(session: LabellingSession, seed: number): Promise<number[]> {
  const next = random(seed);
  const visits: number[] = [];
  for (let i = 0; i < RANDOM_VISITS; i++) {
    const id = session.candidates[Math.floor(next() * session.candidates.length)].id;
    const visit = process.hrtime.bigint();
    await Promise.all([session.cube(id), session.context(id)]);
    visits.push(since(visit));
  }
  return visits;
}

/** As in the page: each candidate is shown (its cube and context cut), then decided; only the decision is timed, in ms. */
async function timedDecisions(session: LabellingSession, shown: readonly Candidate[]): Promise<number[]> {
  const decisions: number[] = [];
  for (const candidate of shown) {
    await Promise.all([session.cube(candidate.id), session.context(candidate.id)]);
    const start = process.hrtime.bigint();
    await session.decide(candidate.id, decisions.length % 2 ? 'cell' : 'no_cell');
    decisions.push(since(start));
  }
  return decisions;
}

async function labellingStep(work: string): Promise<void> {
  const datasetRoot = path.join(work, 'dataset');
  rmSync(datasetRoot, { recursive: true, force: true });
  const dataset = await TrainingDataset.create(datasetRoot);
  // 5,000 labelled cubes already there (hard links to one real cube file) with their log lines.
  const cube = path.join(work, 'one-cube.tif');
  await fs.writeFile(cube, encodeCube(new Float32Array(CUBE_VOXELS).fill(120)));
  const log: string[] = [];
  for (let i = 0; i < LABELLED_ALREADY; i++) {
    const position = { x: i, y: 1, z: PLANES + 1 };
    const folder = i % 2 ? 'cells' : 'non_cells';
    for (const channel of [0, 1]) await fs.link(cube, path.join(datasetRoot, folder, cubeFileName(position, channel)));
    log.push(JSON.stringify({ id: `seed-${i}`, time: new Date().toISOString(), action: 'add', position, label: i % 2 ? 'cell' : 'no_cell', source: 'earlier rounds' }));
  }
  await fs.writeFile(dataset.logFile, `${log.join('\n')}\n`);
  // On disk before the session starts, as a user's earlier labels are (else the first decisions' flushes write these too).
  spawnSync('sync');
  const set = { points: path.join(work, 'candidates.xml'), signal: path.join(work, 'signal'), background: path.join(work, 'background') };

  const loop = monitorEventLoopDelay({ resolution: 5 });
  loop.enable();
  const opened = process.hrtime.bigint();
  const session = await LabellingSession.open(set, datasetRoot);
  const first = session.candidates[0].id;
  await Promise.all([session.cube(first), session.context(first)]);
  const openMs = since(opened);
  report('open the 5,000-candidate set (5,000 cubes already labelled) to the first cube and its context cut', `${openMs.toFixed(0)} ms`);

  const visits = await randomVisits(session, 3);
  report(`host work per candidate, random order (cube + context, ${RANDOM_VISITS} candidates, read from the planes)`, spread(visits));

  report(`one decision of a cube just shown (save both channels + log + status + balance), ${LABELLED_ALREADY}+ cubes in the dataset`, spread(await timedDecisions(session, session.candidates.slice(0, DECISIONS))));
  // As in the editor on opening a large set: the cache sweep cuts in its own process, writing 2-3 GB, while the expert decides.
  const sweeping = path.join(work, 'sweeping');
  rmSync(sweeping, { recursive: true, force: true });
  await (await LabellingSession.open(set, sweeping)).close();
  await saveCandidateSet(sweeping, set);
  const sweep = spawn(process.execPath, [path.resolve(__dirname, '..', '..', 'bin', 'cellfinder-retrain.js'), 'cache', sweeping], { stdio: ['ignore', 'ignore', 'pipe'] });
  await new Promise<void>((resolve) => sweep.stderr.on('data', (chunk: Buffer) => /caching candidates: [1-9]/.test(String(chunk)) && resolve()));
  const duringSweep = await timedDecisions(session, session.candidates.slice(DECISIONS, 2 * DECISIONS));
  const sweepWasRunning = sweep.exitCode === null;
  sweep.kill();
  report(`the same while the cache sweep runs in its own process${sweepWasRunning ? '' : ' (it ended first)'}`, spread(duringSweep));
  rmSync(sweeping, { recursive: true, force: true });
  loop.disable();
  report('longest event-loop block of the host code (opening, the candidates above, the decisions; with the sweep taking a core)', `${(loop.max / 1e6).toFixed(0)} ms`);
  await session.close();
}

/** The cache sweep as the editor runs it (cellfinder-retrain cache, its own process), then labelling served from the cache. */
async function sweepStep(work: string): Promise<void> {
  const datasetRoot = path.join(work, 'swept');
  rmSync(datasetRoot, { recursive: true, force: true });
  const set = { points: path.join(work, 'candidates.xml'), signal: path.join(work, 'signal'), background: path.join(work, 'background') };
  await (await LabellingSession.open(set, datasetRoot)).close();
  await saveCandidateSet(datasetRoot, set);
  const start = process.hrtime.bigint();
  const swept = await cacheCandidates(datasetRoot);
  const seconds = since(start) / 1000;
  report('cache sweep: every candidate\'s cube and context cut into the cache in one pass', `${swept.cached} candidates in ${seconds.toFixed(1)} s: ${(swept.cached / seconds).toFixed(0)} candidates/s`);
  const session = await LabellingSession.open(set, datasetRoot);
  const visits = await randomVisits(session, 5);
  report(`host work per candidate from the cache, random order (${RANDOM_VISITS} candidates)`, spread(visits));
  report(`one decision of a cube shown from the cache (save both channels + log + status + balance)`, spread(await timedDecisions(session, session.candidates.slice(0, DECISIONS))));
  await session.close();
}

/**
 * The real labelling page (headless Chromium) on the host controller, as a
 * fast expert uses it: opening the set to the first cube painted, then
 * decisions and moves 0.3 s apart, key to next cube painted; and the longest
 * the host's event loop was blocked throughout.
 */
async function pageStep(work: string): Promise<void> {
  const datasetRoot = path.join(work, 'page-dataset');
  rmSync(datasetRoot, { recursive: true, force: true });
  const loop = monitorEventLoopDelay({ resolution: 5 });
  loop.enable();
  const browser = await launchBrowser();
  try {
    const opened = process.hrtime.bigint();
    const session = await LabellingSession.open({ points: path.join(work, 'candidates.xml'), signal: path.join(work, 'signal'), background: path.join(work, 'background') }, datasetRoot);
    const latencies: number[] = [];
    const { controller, ui } = await openLabellingPage(browser, session, (ms) => latencies.push(ms));
    report('open a 5,000-candidate set to the first cube painted in the labelling page (page load included)', `${since(opened).toFixed(0)} ms`);
    const press = async (key: string) => {
      await ui.page.waitForTimeout(PAGE_THINK_MS);
      const painted = ui.nextMessage((m) => m.type === 'paintLatency');
      await ui.page.keyboard.press(key);
      await painted;
    };
    for (let i = 0; i < PAGE_PRESSES; i++) await press(i % 2 ? 'n' : 'y');
    await controller.settled();
    report(`key to next cube painted, Y/N decisions ${PAGE_THINK_MS} ms apart (${PAGE_PRESSES}), file order`, spread(latencies.splice(0)));
    for (let i = 0; i < PAGE_PRESSES; i++) await press(i % 10 < 5 ? 'ArrowRight' : 'ArrowLeft');
    report(`key to next cube painted, arrow moves ${PAGE_THINK_MS} ms apart (${PAGE_PRESSES})`, spread(latencies.splice(0)));
    await ui.close();
    await controller.dispose();
  } finally {
    await browser.close();
    loop.disable();
  }
  report('longest event-loop block of the process running the page steps (the host controller and Playwright driving Chromium)', `${(loop.max / 1e6).toFixed(0)} ms`);
}

/**
 * classify on the 5,000 candidates with a ResNet-18 (random weights: speed
 * only), in its own process as the editor runs it: cutting the cubes from the
 * volumes, then re-predicting from the cache the sweep step filled, then with
 * --normalize-channels (whose channel statistics are also timed alone).
 */
async function classifyStep(work: string): Promise<void> {
  const [signal, background] = await openChannels(path.join(work, 'signal'), path.join(work, 'background'));
  for (const volume of [signal, background]) {
    const start = process.hrtime.bigint();
    await channelStatistics(volume);
    const seconds = since(start) / 1000;
    const planes = sampledPlanes(volume.shape[0]).length;
    const mb = (planes * volume.shape[1] * volume.shape[2] * 2) / 1e6;
    report(`channel statistics of ${path.basename(volume.source)} for --normalize-channels: ${planes} of its ${volume.shape[0]} planes, as cellfinder samples them (in this process)`, `${seconds.toFixed(1)} s (${(mb / seconds).toFixed(0)} MB/s of ${mb.toFixed(0)} MB)`);
    await volume.close();
  }
  const model = path.join(work, 'resnet18.keras');
  const tf = (await loadTensorFlow()).tf;
  const spec = resnetSpec(18, 2);
  await writeKerasModel(model, spec, initialWeights(tf, spec, 1), undefined, { overwrite: true });
  const cli = path.resolve(__dirname, '..', '..', 'bin', 'cellfinder-retrain.js');
  for (const [how, extra] of [
    ['cubes cut from the volumes', []],
    ['cubes read from the cache (re-predicting after retraining)', ['--cache', path.join(work, 'swept')]],
    ['cubes cut from the volumes, --normalize-channels (statistics included)', ['--normalize-channels']],
  ] as const) {
    const output = path.join(work, 'classified');
    rmSync(output, { recursive: true, force: true });
    const start = process.hrtime.bigint();
    const run = spawnSync('/usr/bin/time', ['-f', '%M', process.execPath, cli, 'classify', '--trained-model', model, '--network-depth', '18', '--signal', path.join(work, 'signal'), '--background', path.join(work, 'background'), '--points', path.join(work, 'candidates.xml'), '-o', output, '--json', ...extra], { encoding: 'utf8' });
    const seconds = since(start) / 1000;
    if (run.status !== 0) throw new Error(run.stderr);
    const count = (JSON.parse(run.stdout) as { count: number }).count;
    const peakKiB = Number(run.stderr.trim().split('\n').pop());
    report(`classify ${count} candidates with ResNet-18, ${how} (cellfinder-retrain classify, its own process; peak RSS ${(peakKiB / 1024).toFixed(0)} MiB)`, `${(count / seconds).toFixed(1)} candidates/s (${seconds.toFixed(0)} s, TensorFlow start included)`);
  }
}

/** The same reads from the multi-page variant: one pass of extraction, and candidates one by one. */
async function stackStep(work: string): Promise<void> {
  const { volumes, plan } = await onePass(work, 'signal-stack.tif', 'background-stack.tif', `multi-page TIFF (${STACK_PLANES} planes per channel): one pass of extraction`);
  const next = random(13);
  const visits: number[] = [];
  for (let i = 0; i < RANDOM_VISITS; i++) {
    const { point } = plan.extractable[Math.floor(next() * plan.extractable.length)];
    const visit = process.hrtime.bigint();
    await cutCube(point, volumes);
    visits.push(since(visit));
  }
  report(`multi-page TIFF: one candidate's cube cut alone, random order (${RANDOM_VISITS} candidates)`, spread(visits));
  await Promise.all(volumes.map((volume) => volume.close()));
}

export async function runScaleStep(step: string, work: string): Promise<void> {
  if (step === 'xml') await xmlStep(work);
  else if (step === 'extraction') await extractionStep(work);
  else if (step === 'labelling') await labellingStep(work);
  else if (step === 'sweep') await sweepStep(work);
  else if (step === 'page') await pageStep(work);
  else if (step === 'classify') await classifyStep(work);
  else if (step === 'stack') await stackStep(work);
  else throw new Error(`unknown scale step ${step}`);
}

export async function benchScale(script: string): Promise<void> {
  const work = process.env.CELLFINDER_SCALE_DIR ?? path.join(tmpdir(), 'cellfinder-retrain-scale');
  const gib = (2 * PLANES * WIDTH * HEIGHT * 2) / 2 ** 30;
  process.stderr.write(`making whole-brain-sized data in ${work}: 2 channels x ${PLANES} planes of ${HEIGHT}x${WIDTH} uint16 (${gib.toFixed(1)} GiB), ${CANDIDATES} candidates, a ${LARGE_XML}-candidate XML...\n`);
  const made = process.hrtime.bigint();
  await makeData(work);
  process.stderr.write(`data ready (${(since(made) / 1000).toFixed(0)} s)\n`);
  const results: StepResult[] = [];
  try {
    for (const step of ['xml', 'extraction', 'stack', 'labelling', 'sweep', 'page', 'classify']) {
      const run = spawnSync(process.execPath, [script, 'scale-step', step, work], { encoding: 'utf8', maxBuffer: 1 << 24 });
      if (run.status !== 0) throw new Error(`scale step ${step} failed:\n${run.stderr}`);
      for (const line of run.stdout.trim().split('\n')) results.push(JSON.parse(line) as StepResult);
    }
  } finally {
    if (!process.env.CELLFINDER_SCALE_KEEP) rmSync(work, { recursive: true, force: true });
  }
  console.log(`\nWhole-brain scale: 2 channels x ${PLANES} planes of ${HEIGHT}x${WIDTH} uint16 as plane folders (${gib.toFixed(1)} GiB), ${CANDIDATES} candidates; each step in its own process (peak RSS of that process)\n`);
  console.log('| step | figures | peak RSS (MiB) |');
  console.log('|---|---|---|');
  for (const r of results) console.log(`| ${r.step} | ${r.figures} | ${r.maxRssMiB.toFixed(0)} |`);
}
