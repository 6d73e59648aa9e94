/**
 * The training panel in headless Chromium against a real training run: the
 * worker is started detached (as the editor starts it), the page follows its
 * event log live, Cancel stops it with a resumable checkpoint, Resume
 * finishes it, Evaluate runs the real CLI in a separate process. Screenshots
 * in each theme go to docs/screenshots/.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, before, test, type TestContext } from 'node:test';
import type { Browser } from 'playwright-core';
import { runCliJson } from '../src/controllers/cliProcess';
import { TrainingController } from '../src/controllers/trainingController';
import type { Evaluation } from '../src/training/inference';
import { readRun, startWorker } from '../src/training/runs';
import { TRAIN_DEFAULTS, type TrainConfig } from '../src/training/trainConfig';
import { TRAINING_BODY } from '../src/webview/training/body';
import type { HostToTraining, TrainingToHost } from '../src/webview/protocol';
import { REPO_ROOT, scratch, tinyDataset } from './helpers';
import { chromiumAvailable, launchBrowser, openPage, SCREENSHOTS, type OpenPage } from './webview/harness';
import type { ThemeName } from './webview/themes';

const WORKER = path.join(REPO_ROOT, 'dist', 'worker.js');
const CLI = { nodePath: process.execPath, cliScript: path.join(REPO_ROOT, 'bin', 'cellfinder-retrain.js'), device: 'auto' as const };

let browser: Browser;
before(async () => {
  assert.ok(chromiumAvailable(), 'Debian chromium is needed at /usr/bin/chromium (apt-get install chromium; .ci/run installs it)');
  browser = await launchBrowser();
});
after(() => browser?.close());

function openTraining(t: TestContext, outputDir: string, yaml: string, theme: ThemeName): Promise<{ controller: TrainingController; ui: OpenPage<TrainingToHost> }> {
  let sendToPage: ((message: HostToTraining) => Promise<void>) | undefined;
  const controller = new TrainingController(outputDir, (message) => void sendToPage?.(message), {
    resume: async (run) => {
      await startWorker({ nodePath: process.execPath, workerScript: WORKER, mode: 'resume', target: run.outputDir, outputDir: run.outputDir });
    },
    classify: async () => undefined,
    // The final model beside the first epoch's checkpoint, as a user compares two models.
    evaluate: async (run) => {
      const checkpoint = (await fs.readdir(run.outputDir)).find((name) => name.startsWith('model-epoch.01-'));
      return runCliJson<Evaluation[]>(CLI, ['evaluate', '--trained-model', run.modelFile as string, '--compare', path.join(run.outputDir, checkpoint as string), '-y', yaml]);
    },
    revealOutput: () => undefined,
  });
  return openPage<TrainingToHost>(browser, 'training', TRAINING_BODY, theme, (message, send) => {
    sendToPage = send;
    void controller.handle(message);
  }).then((ui) => {
    // Closed even when an assertion fails first, so no server or page outlives the test.
    t.after(async () => {
      controller.dispose();
      await ui.close();
    });
    return { controller, ui };
  });
}

async function status(ui: OpenPage<TrainingToHost>, expected: string, timeoutMs = 240_000): Promise<void> {
  await ui.page.waitForFunction((want) => document.getElementById('run-status')?.textContent === want, expected, { timeout: timeoutMs });
}

test('training panel follows a real run live; Cancel leaves a checkpoint, Resume finishes it, Evaluate shows the confusion matrix', { timeout: 10 * 60_000 }, async (t) => {
  const root = scratch(t);
  const yaml = await tinyDataset(root);
  const outputDir = path.join(root, 'run');
  const config: TrainConfig = { ...TRAIN_DEFAULTS, yamlFiles: [yaml], outputDir, networkDepth: 18, epochs: 4, batchSize: 1, testFraction: 0.25, seed: 3, saveProgress: true };
  const configFile = path.join(root, 'config.json');
  await fs.writeFile(configFile, JSON.stringify(config));
  await startWorker({ nodePath: process.execPath, workerScript: WORKER, mode: 'train', target: configFile, outputDir });

  const { controller, ui } = await openTraining(t, outputDir, yaml, 'dark');
  await status(ui, 'running', 60_000);
  // Streamed: batch points reach the chart while the run goes on.
  await ui.page.waitForFunction(() => Number(document.getElementById('loss-chart')?.dataset.points) > 0, undefined, { timeout: 240_000 });
  assert.match((await ui.page.textContent('#model')) ?? '', /^ResNet-18, 2 channel\(s\), [\d,]+ parameters$/);
  // Where the run starts from, and each part's cubes per class (the split file names each cube).
  assert.match((await ui.page.textContent('#start')) ?? '', /^Starts from new weights \(cellfinder's initialisation\), a fresh Adam, learning rate [\d.e-]+ \(--learning-rate\)$/);
  assert.match((await ui.page.textContent('#samples')) ?? '', /^\d+ \(\d+ cells?, \d+ non-cells?\) \/ \d+ \(\d+ cells?, \d+ non-cells?\)$/);
  assert.match((await ui.page.getAttribute('#samples', 'title')) ?? '', /training-split\.csv$/);
  await ui.page.waitForFunction(() => document.querySelectorAll('#epochs tbody tr').length >= 1, undefined, { timeout: 240_000 });
  await ui.page.click('#cancel');
  await status(ui, 'cancelled');
  const cancelled = await readRun(outputDir);
  assert.equal(cancelled.status, 'cancelled');
  assert.equal(cancelled.resumable, true);
  assert.equal(await ui.page.$eval('#cancel', (button) => (button as HTMLElement & { disabled: boolean }).disabled), true);
  assert.equal(await ui.page.$eval('#resume', (button) => (button as HTMLElement & { disabled: boolean }).disabled), false);

  await ui.page.click('#resume');
  await status(ui, 'finished');
  await controller.caughtUp();
  assert.equal(await ui.page.locator('#epochs tbody tr').count(), 4);
  assert.match((await ui.page.textContent('#start')) ?? '', /^Starts from new weights .*\(--learning-rate\); resumed at epoch \d with its optimiser at iteration \d+$/);
  const finished = await readRun(outputDir);
  assert.equal(finished.status, 'finished');
  assert.ok(finished.modelFile && finished.modelFile.endsWith('model.keras'));
  const lossPoints = Number(await ui.page.getAttribute('#loss-chart', 'data-points'));
  const batches = finished.events.filter((e) => e.type === 'batch').length;
  const epochs = finished.events.filter((e) => e.type === 'epoch').length;
  assert.ok(lossPoints >= batches + 4, `chart shows every batch and epoch (${lossPoints} points, ${batches} batches, ${epochs} epoch reports)`);

  await ui.page.click('#evaluate');
  await ui.page.waitForSelector('#evaluation:not([hidden]), #error:not([hidden])', { timeout: 120_000 });
  assert.equal(await ui.page.isHidden('#error'), true, (await ui.page.textContent('#error')) ?? '');
  const models = await ui.page.locator('#evaluation-results h3').allTextContents();
  assert.deepEqual(models.map((m) => m.replace(/loss-\d+\.\d+/, 'loss-X')), ['run/model.keras', 'run/model-epoch.01-loss-X.keras']);
  for (const accuracy of await ui.page.locator('#evaluation-results p').allTextContents()) assert.match(accuracy, /^Accuracy \d+\.\d% on 4 cubes$/);
  await fs.mkdir(SCREENSHOTS, { recursive: true });
  await ui.page.screenshot({ path: path.join(SCREENSHOTS, 'training-dark.png'), fullPage: true });
  assert.deepEqual(ui.errors, []);
  controller.dispose();
  await ui.close();

  // Reopened after the run (as after a window reload): the whole run is shown from its files.
  for (const theme of ['light', 'high-contrast'] as const) {
    const again = await openTraining(t, outputDir, yaml, theme);
    await status(again.ui, 'finished', 30_000);
    await again.ui.page.waitForFunction(() => document.querySelectorAll('#epochs tbody tr').length === 4);
    await again.ui.page.screenshot({ path: path.join(SCREENSHOTS, `training-${theme}.png`), fullPage: true });
    assert.deepEqual(again.ui.errors, []);
    again.controller.dispose();
    await again.ui.close();
  }
});

test('a run on cells only shows its warning above the summary', { timeout: 5 * 60_000 }, async (t) => {
  const root = scratch(t);
  const yaml = await tinyDataset(root);
  await fs.writeFile(yaml, (await fs.readFile(yaml, 'utf8')).replace(/- bg_channel: 1\n  cell_def: ''\n  cube_dir: non_cells[^]*$/, ''));
  const outputDir = path.join(root, 'cells-only');
  const config: TrainConfig = { ...TRAIN_DEFAULTS, yamlFiles: [yaml], outputDir, networkDepth: 18, epochs: 1, batchSize: 2, testFraction: 0 };
  const configFile = path.join(root, 'config.json');
  await fs.writeFile(configFile, JSON.stringify(config));
  await startWorker({ nodePath: process.execPath, workerScript: WORKER, mode: 'train', target: configFile, outputDir });
  const { ui } = await openTraining(t, outputDir, yaml, 'dark');
  await status(ui, 'finished');
  assert.equal(await ui.page.textContent('#samples'), '2 (2 cells, 0 non-cells) / none');
  assert.match((await ui.page.textContent('#warnings')) ?? '', /^Warning: the training data holds only cells \(2\), no non-cells: the network will learn to call everything a cell/);
  assert.equal(await ui.page.isVisible('#warnings'), true);
  await ui.page.screenshot({ path: path.join(root, 'training-one-class.png'), fullPage: true });
  if (process.env.CELLFINDER_KEEP_SCREENSHOT) await fs.copyFile(path.join(root, 'training-one-class.png'), process.env.CELLFINDER_KEEP_SCREENSHOT);
  assert.deepEqual(ui.errors, []);
});
