/**
 * The labelling page in headless Chromium, driven by keyboard like a user,
 * against the real host controller, real candidate cubes from the sample
 * volume and a real dataset on disk. Also measures key-to-paint latency and
 * screenshots the page in each theme (docs/screenshots/).
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, before, test, type TestContext } from 'node:test';
import type { Browser } from 'playwright-core';
import { LabellingController } from '../src/controllers/labellingController';
import { readCube } from '../src/core/cube';
import { LabellingSession, type CandidateSet } from '../src/core/labelling';
import { LABELLING_BODY } from '../src/webview/labelling/body';
import type { HostToLabelling, LabellingToHost } from '../src/webview/protocol';
import { percentile } from '../src/webview/render';
import { SAMPLE, scratch } from './helpers';
import { chromiumAvailable, launchBrowser, openPage, SCREENSHOTS, type OpenPage } from './webview/harness';
import type { ThemeName } from './webview/themes';

const SET: CandidateSet = {
  points: path.join(SAMPLE, 'candidates', 'candidates.xml'),
  signal: path.join(SAMPLE, 'signal'),
  background: path.join(SAMPLE, 'background'),
  voxelSizes: [5, 2, 2],
};

let browser: Browser;
before(async () => {
  assert.ok(chromiumAvailable(), 'Debian chromium is needed at /usr/bin/chromium (apt-get install chromium; .ci/run installs it)');
  browser = await launchBrowser();
});
after(() => browser?.close());

interface Opened {
  controller: LabellingController;
  ui: OpenPage<LabellingToHost>;
  latencies: number[];
}

async function openLabelling(t: TestContext, set: CandidateSet | undefined, datasetRoot: string, theme: ThemeName = 'dark'): Promise<Opened> {
  const session = set ? await LabellingSession.open(set, datasetRoot) : await LabellingSession.review(datasetRoot);
  const latencies: number[] = [];
  // The page speaks first ('ready'), which hands over the way back to it.
  let sendToPage: ((message: HostToLabelling) => Promise<void>) | undefined;
  const controller = new LabellingController(session, (message) => void sendToPage?.(message), { onPaintLatency: (ms) => latencies.push(ms) });
  const ui = await openPage<LabellingToHost>(browser, 'labelling', LABELLING_BODY, theme, (message, send) => {
    sendToPage = send;
    void controller.handle(message);
  });
  // Closed even when an assertion fails first, so no server or page outlives the test.
  t.after(() => closeLabelling({ controller, ui, latencies }));
  await ui.page.waitForFunction(() => document.getElementById('candidate-name')?.textContent?.startsWith('Candidate'));
  return { controller, ui, latencies };
}

async function closeLabelling(opened: Opened): Promise<void> {
  await opened.ui.close();
  await opened.controller.dispose();
}

async function text(ui: OpenPage<LabellingToHost>, id: string): Promise<string> {
  return (await ui.page.textContent(`#${id}`)) ?? '';
}

/** Waits until the page has painted the candidate it shows (its cube has arrived). */
async function painted(ui: OpenPage<LabellingToHost>): Promise<void> {
  await ui.page.waitForFunction(() => (document.getElementById('channel-0') as HTMLCanvasElement).style.width !== '');
}

test('keyboard labelling of real candidates: Y/N/S save at once, U undoes, a reopened set continues', async (t) => {
  const datasetRoot = scratch(t);
  const opened = await openLabelling(t, SET, datasetRoot);
  const { ui } = opened;
  assert.match(await text(ui, 'candidate-name'), /^Candidate 1 of 13 · x \d+, y \d+, z \d+$/);
  assert.match(await text(ui, 'progress'), /^0 of 13 decided · all saved · 25 too close to the edge/);
  await painted(ui);

  const first = opened.controller;
  const firstCandidate = (await first.view()).orderedIds[0];
  assert.equal((await first.view()).order, 'file', 'without predictions, candidates come in file order');
  const decision = ui.nextMessage((m) => m.type === 'decide');
  await ui.page.keyboard.press('y');
  assert.deepEqual(await decision, { type: 'decide', id: firstCandidate, decision: 'cell' });
  await first.settled();
  // Saved at once: both channel files of the candidate's cube, identical to a fresh extraction.
  const session = await LabellingSession.open(SET, datasetRoot);
  const candidate = session.candidate(firstCandidate);
  const cube = await session.cube(firstCandidate);
  await session.close();
  const name = `pCellz${candidate.position.z}y${candidate.position.y}x${candidate.position.x}Ch0.tif`;
  const saved = await readCube(path.join(datasetRoot, 'cells', name));
  assert.deepEqual(saved.data, cube.channels[0]);
  assert.ok((await fs.readdir(path.join(datasetRoot, 'cells'))).includes(name.replace('Ch0', 'Ch1')));
  assert.match(await text(ui, 'candidate-name'), /^Candidate 2 of 13/);

  await ui.page.keyboard.press('n');
  await ui.page.keyboard.press('s');
  await ui.page.waitForFunction(() => document.getElementById('candidate-name')?.textContent?.startsWith('Candidate 4 of 13'));
  await first.settled();
  assert.equal((await fs.readdir(path.join(datasetRoot, 'non_cells'))).length, 2);
  assert.match(await text(ui, 'progress'), /^3 of 13 decided/);
  // The page says "all saved" only once the host has confirmed every decision.
  await ui.page.waitForFunction(() => /^3 of 13 decided · all saved/.test(document.getElementById('progress')?.textContent ?? ''));

  // Undo takes back the skip and returns to that candidate, shown as to do.
  await ui.page.keyboard.press('u');
  await ui.page.waitForFunction(() => document.getElementById('candidate-name')?.textContent?.startsWith('Candidate 3 of 13'));
  assert.equal(await text(ui, 'status-badge'), 'to do');
  // Ctrl+Z undoes the non-cell: its cube goes to the trash, not away.
  await ui.page.keyboard.press('Control+z');
  await ui.page.waitForFunction(() => document.getElementById('candidate-name')?.textContent?.startsWith('Candidate 2 of 13'));
  await first.settled();
  assert.equal((await fs.readdir(path.join(datasetRoot, 'non_cells'))).length, 0);
  assert.equal((await fs.readdir(path.join(datasetRoot, '.trash'))).length, 1);

  // Arrows move without deciding; the help overlay opens with ? and closes with Escape.
  await ui.page.keyboard.press('ArrowRight');
  await ui.page.waitForFunction(() => document.getElementById('candidate-name')?.textContent?.startsWith('Candidate 3 of 13'));
  await ui.page.keyboard.press('?');
  assert.equal(await ui.page.isVisible('#help'), true);
  await ui.page.keyboard.press('Escape');
  assert.equal(await ui.page.isVisible('#help'), false);
  assert.deepEqual(ui.errors, []);
  await closeLabelling(opened);

  // Reopened (a new session and a new page, as after a window reload): the first candidate is
  // labelled cell, the next undecided one is where it starts.
  const reopened = await openLabelling(t, SET, datasetRoot);
  assert.match(await text(reopened.ui, 'candidate-name'), /^Candidate 2 of 13/);
  assert.match(await text(reopened.ui, 'progress'), /^1 of 13 decided/);
  await closeLabelling(reopened);
});

test('labelling every candidate by keyboard: key-to-paint latency (p50/p95) and the balance tracker', async (t) => {
  const datasetRoot = scratch(t);
  // A classify sidecar for these candidates: alternating confident and uncertain predictions.
  const session = await LabellingSession.open(SET, scratch(t));
  const rows = session.candidates.map((c, i) => `${c.position.x},${c.position.y},${c.position.z},${i % 2 ? 1 : 2},${i % 2 ? 0.1 + i / 100 : 0.45 + i / 100}`);
  await session.close();
  const predictions = path.join(scratch(t), 'classified_points.csv');
  await fs.writeFile(predictions, `x,y,z,type,cell_probability\n${rows.join('\n')}\n`);

  const opened = await openLabelling(t, { ...SET, predictions }, datasetRoot);
  const { ui } = opened;
  const view = await opened.controller.view();
  assert.equal(view.order, 'uncertain-first');
  const probabilities = view.orderedIds.map((id) => view.candidates.find((c) => c.id === id)?.prediction?.cellProbability as number);
  const certainty = probabilities.map((p) => Math.abs(p - 0.5));
  assert.deepEqual(certainty, [...certainty].sort((a, b) => a - b), 'most uncertain first');
  assert.match(await text(ui, 'prediction'), /^Model says (cell|non-cell) \(p\(cell\) = 0\.\d\d\)$/);

  // Label all 13: cell for those the model calls cell except one, non-cell otherwise.
  await painted(ui);
  const decisions: string[] = [];
  for (const [index, id] of view.orderedIds.entries()) {
    const predicted = view.candidates.find((c) => c.id === id)?.prediction?.label;
    const key = index === 0 ? (predicted === 'cell' ? 'n' : 'y') : predicted === 'cell' ? 'y' : 'n';
    decisions.push(key);
    const paintedOrLast = ui.nextMessage((m) => m.type === 'paintLatency' || (index === view.orderedIds.length - 1 && m.type === 'decide'));
    await ui.page.keyboard.press(key);
    await paintedOrLast;
    // Give the page a frame so each press is a separate, user-paced action.
    await ui.page.evaluate(() => new Promise((resolve) => requestAnimationFrame(resolve)));
  }
  await opened.controller.settled();
  await ui.page.waitForFunction(() => /^13 of 13 decided/.test(document.getElementById('progress')?.textContent ?? ''));
  const balance = await opened.controller.view().then((v) => v.balance);
  const firstPredicted = view.candidates.find((c) => c.id === view.orderedIds[0])?.prediction?.label;
  const cellsPredicted = view.candidates.filter((c) => c.prediction?.label === 'cell').length;
  assert.equal(balance.cellsPredictedCell + balance.cellsPredictedNonCell + balance.nonCellsPredictedNonCell + balance.nonCellsPredictedCell, 13);
  assert.equal(balance.cellsPredictedCell, cellsPredicted - (firstPredicted === 'cell' ? 1 : 0));
  assert.equal(firstPredicted === 'cell' ? balance.nonCellsPredictedCell : balance.cellsPredictedNonCell, 1);
  const row = await ui.page.textContent('tr[data-category="cellsPredictedCell"] .count');
  assert.equal(row, `${balance.cellsPredictedCell} / 250`);

  const latencies = [...opened.latencies].sort((a, b) => a - b);
  assert.ok(latencies.length >= 12, `a paint latency per decision (got ${latencies.length})`);
  console.log(`labelling key-to-paint latency over ${latencies.length} decisions: p50 ${percentile(latencies, 0.5).toFixed(1)} ms, p95 ${percentile(latencies, 0.95).toFixed(1)} ms, max ${latencies[latencies.length - 1].toFixed(1)} ms`);
  assert.deepEqual(ui.errors, []);
  await closeLabelling(opened);
});

test('reviewing a dataset\'s own cubes: N relabels a cell as non-cell (file moved, bytes unchanged), U moves it back', async (t) => {
  const datasetRoot = scratch(t);
  const labelling = await LabellingSession.open(SET, datasetRoot);
  const [a, b] = labelling.candidates;
  await labelling.decide(a.id, 'cell');
  await labelling.decide(b.id, 'no_cell');
  await labelling.close();
  const cellFile = (await fs.readdir(path.join(datasetRoot, 'cells'))).find((name) => name.endsWith('Ch0.tif')) as string;
  const bytes = await fs.readFile(path.join(datasetRoot, 'cells', cellFile));

  const opened = await openLabelling(t, undefined, datasetRoot);
  const { ui } = opened;
  assert.equal(await text(ui, 'title'), `Reviewing ${path.basename(datasetRoot)}`);
  assert.match(await text(ui, 'candidate-name'), /^Candidate 1 of 2/);
  assert.equal(await text(ui, 'status-badge'), 'labelled cell');
  await painted(ui);
  assert.equal(await ui.page.isVisible('#context-figure'), false, 'no volume, so no context view');
  const relabel = ui.nextMessage((m) => m.type === 'decide');
  await ui.page.keyboard.press('n');
  await relabel;
  await opened.controller.settled();
  assert.deepEqual(await fs.readFile(path.join(datasetRoot, 'non_cells', cellFile)), bytes);
  await ui.page.keyboard.press('u');
  await ui.page.waitForFunction(() => document.getElementById('status-badge')?.textContent === 'labelled cell');
  await opened.controller.settled();
  assert.deepEqual(await fs.readFile(path.join(datasetRoot, 'cells', cellFile)), bytes);
  assert.deepEqual(ui.errors, []);
  await closeLabelling(opened);
});

test('screenshots of the labelling page in dark, light and high-contrast themes', async (t) => {
  await fs.mkdir(SCREENSHOTS, { recursive: true });
  const datasetRoot = scratch(t);
  const session = await LabellingSession.open(SET, scratch(t));
  const rows = session.candidates.map((c, i) => `${c.position.x},${c.position.y},${c.position.z},${i % 3 ? 1 : 2},${i % 3 ? 0.2 : 0.71}`);
  await session.close();
  const predictions = path.join(scratch(t), 'classified_points.csv');
  await fs.writeFile(predictions, `x,y,z,type,cell_probability\n${rows.join('\n')}\n`);
  for (const theme of ['dark', 'light', 'high-contrast'] as const) {
    const opened = await openLabelling(t, { ...SET, predictions }, datasetRoot, theme);
    await painted(opened.ui);
    if (theme === 'dark') {
      for (const key of ['y', 'n', 'n']) await opened.ui.page.keyboard.press(key);
      await opened.ui.page.waitForFunction(() => /^3 of 13/.test(document.getElementById('progress')?.textContent ?? ''));
      await opened.controller.settled();
      await painted(opened.ui);
    }
    await opened.ui.page.screenshot({ path: path.join(SCREENSHOTS, `labelling-${theme}.png`) });
    if (theme === 'dark') {
      await opened.ui.page.keyboard.press('?');
      await opened.ui.page.screenshot({ path: path.join(SCREENSHOTS, 'labelling-help-dark.png') });
    }
    assert.deepEqual(opened.ui.errors, []);
    await closeLabelling(opened);
  }
});
