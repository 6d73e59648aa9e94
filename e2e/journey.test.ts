/**
 * The user's journey in a real VS Code (code-server), driven by keyboard and
 * clicks only: the sidebar shows the sample dataset; labelling with Y/N/U
 * saves at once and survives closing the tab and kill -9 of the editor;
 * "Retrain Network" from the palette trains in the background with the panel
 * following, Cancel and Resume; the model appears under Models; predicting
 * with it orders candidates most uncertain first; an untrusted workspace only
 * browses. Screenshots go to docs/e2e/.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, before, test } from 'node:test';
import type { Browser } from 'playwright-core';
import { CELLS_FOLDER, NON_CELLS_FOLDER, TrainingDataset } from '../src/core/dataset';
import { saveCandidateSet } from '../src/core/labelling';
import { REPO_ROOT, SAMPLE, scratch } from '../test/helpers';
import { CodeServer, launchChromium, makeProfile, packageExtension, Workbench, type Profile } from './codeServer';

const SHOTS = path.join(REPO_ROOT, 'docs', 'e2e');

let browser: Browser;
let vsix: string;
before(async () => {
  vsix = packageExtension();
  browser = await launchChromium();
});
after(() => browser?.close());

/**
 * The sample workspace: cellfinder's test volume and candidates, a dataset of
 * cellfinder's own labelled cubes, and a dataset to label the candidates into
 * that remembers them (as "Label Candidates" leaves it).
 */
async function sampleWorkspace(root: string): Promise<string> {
  const workspace = path.join(root, 'workspace');
  await fs.cp(SAMPLE, path.join(workspace, 'sample'), { recursive: true });
  const labelled = await TrainingDataset.create(path.join(workspace, 'labelled'));
  for (const folder of [CELLS_FOLDER, NON_CELLS_FOLDER]) {
    await fs.cp(path.join(SAMPLE, 'training', folder), path.join(labelled.root, folder), { recursive: true });
  }
  const toLabel = await TrainingDataset.create(path.join(workspace, 'round1'));
  await saveCandidateSet(toLabel.root, {
    points: path.join(workspace, 'sample', 'candidates', 'candidates.xml'),
    signal: path.join(workspace, 'sample', 'signal'),
    background: path.join(workspace, 'sample', 'background'),
    voxelSizes: [5, 2, 2],
  });
  return workspace;
}

async function cubeFiles(folder: string): Promise<string[]> {
  return (await fs.readdir(folder).catch(() => [] as string[])).filter((name) => name.endsWith('.tif')).sort();
}

async function openLabelling(workbench: Workbench, dataset: string): Promise<void> {
  await workbench.openCellfinder();
  const row = workbench.treeRow(dataset);
  await row.hover();
  await row.locator('.action-label[aria-label="Label into This Dataset"]').click();
  await workbench.webview().locator('#candidate-name').filter({ hasText: 'Candidate' }).waitFor({ timeout: 30_000 });
  await workbench.webview().locator('#channel-0[style*="width"]').waitFor();
}

test('the journey in a real VS Code: sidebar, keyboard labelling that survives kill -9, retrain with cancel/resume, predict, untrusted browsing', { timeout: 15 * 60_000 }, async (t) => {
  const root = scratch(t, 'cfr-e2e-');
  const workspace = await sampleWorkspace(root);
  const profile: Profile = makeProfile(vsix, { theme: 'Default Dark Modern', workspaceTrust: false });
  let server = await CodeServer.start(profile, workspace, { askTrust: false });
  t.after(() => server.stop('SIGKILL'));
  let workbench = await Workbench.open(browser, server);

  // 1. The Cellfinder view lists the datasets with their counts.
  await workbench.openCellfinder();
  await workbench.treeRow('labelled').locator('.label-description', { hasText: '2 cells · 2 non-cells' }).waitFor({ timeout: 30_000 });
  await workbench.treeRow('round1').locator('.label-description', { hasText: '0 cells · 0 non-cells' }).waitFor();
  await workbench.screenshot(SHOTS, '1-sidebar-dark');

  // 3. Label by keyboard: Y, N, Y, then U undoes the last; each decision is on disk at once.
  await openLabelling(workbench, 'round1');
  const view = workbench.webview();
  await view.locator('#channel-0').click();
  for (const key of ['y', 'n', 'y']) {
    await workbench.page.keyboard.press(key);
    await workbench.page.waitForTimeout(250);
  }
  await workbench.page.keyboard.press('u');
  await view.locator('#progress', { hasText: /^2 of 13 decided · all saved/ }).waitFor();
  const round1 = path.join(workspace, 'round1');
  assert.equal((await cubeFiles(path.join(round1, CELLS_FOLDER))).length, 2, 'one cell, two channels');
  assert.equal((await cubeFiles(path.join(round1, NON_CELLS_FOLDER))).length, 2, 'one non-cell, two channels');
  // The tree follows the files (watcher).
  await workbench.treeRow('round1').locator('.label-description', { hasText: '1 cells · 1 non-cells' }).waitFor({ timeout: 15_000 });
  await workbench.screenshot(SHOTS, '3-labelling-dark');

  // Close the tab and reopen: it continues at the first candidate still to do.
  await workbench.page.locator('.tab', { hasText: 'Label: candidates.xml' }).locator('.codicon-close').click();
  await openLabelling(workbench, 'round1');
  await workbench.webview().locator('#progress', { hasText: /^2 of 13 decided/ }).waitFor();
  assert.match((await workbench.webview().locator('#candidate-name').textContent()) ?? '', /^Candidate 3 of 13/);

  // One more label, then kill -9 the editor mid-session: the label is on disk, and the view shows it after a restart.
  await workbench.webview().locator('#channel-0').click();
  await workbench.page.keyboard.press('n');
  // Killed as soon as the page says the decision is saved.
  await workbench.webview().locator('#progress', { hasText: /^3 of 13 decided · all saved/ }).waitFor();
  await server.stop('SIGKILL');
  await workbench.page.close();
  assert.equal((await cubeFiles(path.join(round1, NON_CELLS_FOLDER))).length, 4);
  server = await CodeServer.start(profile, workspace, { askTrust: false });
  workbench = await Workbench.open(browser, server);
  await openLabelling(workbench, 'round1');
  await workbench.webview().locator('#progress', { hasText: /^3 of 13 decided/ }).waitFor();

  // 4. Retrain Network from the palette, a tiny run: ResNet-18, 12 epochs of batch 1 on the labelled dataset.
  await workbench.runCommand('Cellfinder: Retrain Network');
  const quickInput = workbench.page.locator('.quick-input-widget');
  const answer = async (keys: string[]) => {
    await quickInput.waitFor({ state: 'visible' });
    await workbench.page.waitForTimeout(300);
    for (const key of keys) {
      if (key.startsWith('type:')) await workbench.page.keyboard.type(key.slice(5));
      else await workbench.page.keyboard.press(key);
    }
    await workbench.page.waitForTimeout(300);
  };
  // Datasets: the first readable one ("labelled") comes ticked, so Enter takes it.
  await answer(['Enter']);
  await answer(['type:From scratch', 'Enter']);
  await answer(['type:ResNet-18', 'Enter']);
  await answer(['Control+a', 'type:12', 'Enter']);
  await answer(['Control+a', 'type:1', 'Enter']);
  await answer(['Enter']);
  await answer(['Enter']);
  await answer(['Enter']);
  const panel = workbench.webview();
  await panel.locator('#run-status', { hasText: 'running' }).waitFor({ timeout: 60_000 });
  await panel.locator('#epochs tbody tr').first().waitFor({ timeout: 120_000 });
  await workbench.screenshot(SHOTS, '4-training-running-dark');
  await panel.locator('#cancel').click();
  await panel.locator('#run-status', { hasText: 'cancelled' }).waitFor({ timeout: 120_000 });
  await panel.locator('#resume').click();
  await panel.locator('#run-status', { hasText: 'finished' }).waitFor({ timeout: 300_000 });
  assert.equal(await panel.locator('#epochs tbody tr').count(), 12);
  await workbench.openCellfinder();
  await workbench.treeRow('model.keras').waitFor({ timeout: 15_000 });
  await workbench.screenshot(SHOTS, '4-training-finished-dark');

  // 5. Predict the candidates with the new model: the view orders them most uncertain first.
  await openLabelling(workbench, 'round1');
  await workbench.webview().locator('#choose-model').click();
  await workbench.page.locator('.quick-input-widget .monaco-list-row', { hasText: 'model.keras' }).first().waitFor();
  await workbench.page.keyboard.type('model.keras');
  await workbench.page.keyboard.press('Enter');
  await workbench.webview().locator('#prediction', { hasText: 'p(cell)' }).waitFor({ timeout: 120_000 });
  assert.equal(await workbench.webview().locator('#order').evaluate((select) => (select as HTMLElement & { value: string }).value), 'uncertain-first');
  await workbench.screenshot(SHOTS, '5-predicted-dark');
  assert.deepEqual(workbench.webviewErrors, []);
  await workbench.page.close();
  await server.stop();

  // 6. The same workspace, untrusted, in the light theme: the views browse, the palette offers no training.
  const untrustedProfile = makeProfile(vsix, { theme: 'Default Light Modern', workspaceTrust: true });
  server = await CodeServer.start(untrustedProfile, workspace, { askTrust: true });
  workbench = await Workbench.open(browser, server);
  // VS Code asks whether to trust the folder; the user says no.
  const trustDialog = workbench.page.locator('.monaco-dialog-box', { hasText: /trust/i });
  await trustDialog.waitFor({ timeout: 30_000 });
  await trustDialog.getByRole('button', { name: /don.t trust/i }).click();
  await trustDialog.waitFor({ state: 'hidden' });
  await workbench.openCellfinder();
  await workbench.treeRow('labelled').locator('.label-description', { hasText: '2 cells · 2 non-cells' }).waitFor({ timeout: 30_000 });
  const offered = await workbench.paletteEntries('Cellfinder:');
  assert.ok(!offered.some((entry) => /Retrain Network|Label Candidates|Classify/.test(entry)), `untrusted palette offers ${offered.join(', ')}`);
  await workbench.screenshot(SHOTS, '6-untrusted-light');
  await workbench.page.close();
});
