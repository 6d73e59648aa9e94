/**
 * The user's journey in a real VS Code (code-server), driven by keyboard and
 * clicks only: the sidebar shows the sample dataset; labelling with Y/N/U
 * saves at once and survives closing the tab and kill -9 of the editor;
 * "Set Up Training Engine" from the palette, on a machine without a compiler,
 * make or Node headers (the addon comes in the VSIX); "Retrain Network" from
 * the palette trains on that engine in the background with the panel
 * following, Cancel and Resume; the model appears under Models; predicting
 * with it orders candidates most uncertain first; "Retrain Network" again,
 * submitted to SLURM through the form, with the panel following the job
 * (the one-node cluster of scripts/slurm-local.sh, started here when it is
 * not running); an untrusted workspace only browses. Screenshots go to
 * docs/e2e/, the SLURM run's to docs/screenshots/.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, before, test } from 'node:test';
import type { Browser } from 'playwright-core';
import { CELLS_FOLDER, NON_CELLS_FOLDER, TrainingDataset } from '../src/core/dataset';
import { readJobRecords, SLURM_SCRIPT_FILE } from '../src/cluster/slurm';
import { EVENTS_FILE } from '../src/core/runFiles';
import { readActiveEngine } from '../src/engine/engineLayout';
import { TRAIN_CONFIG_FILE } from '../src/training/trainConfig';
import { pathWithOnly, REPO_ROOT, scratch } from '../test/helpers';
import { kerasCellProbabilities, ourCellProbabilities } from '../test/kerasPeer';
import { CodeServer, launchChromium, makeProfile, packageExtension, Workbench, type Profile } from './codeServer';
import { sampleWorkspace } from './sampleWorkspace';

const SHOTS = path.join(REPO_ROOT, 'docs', 'e2e');
const SLURM_SHOTS = path.join(REPO_ROOT, 'docs', 'screenshots');
const SLURM_SCRIPT = path.join(REPO_ROOT, 'scripts', 'slurm-local.sh');

let browser: Browser;
let vsix: string;
let startedSlurmHere = false;
before(async () => {
  // The SLURM step needs a cluster: without one the journey fails rather than skipping it (CI starts it first).
  if (spawnSync('bash', [SLURM_SCRIPT, 'status']).status !== 0) {
    const start = spawnSync('bash', [SLURM_SCRIPT, 'start'], { encoding: 'utf8' });
    assert.equal(start.status, 0, `the test cluster did not start: ${start.stderr}`);
    startedSlurmHere = true;
  }
  vsix = packageExtension();
  browser = await launchChromium();
});
after(async () => {
  await browser?.close();
  if (startedSlurmHere) spawnSync('bash', [SLURM_SCRIPT, 'stop']);
});

async function cubeFiles(folder: string): Promise<string[]> {
  return (await fs.readdir(folder).catch(() => [] as string[])).filter((name) => name.endsWith('.tif')).sort();
}

test('the journey in a real VS Code: sidebar, keyboard labelling that survives kill -9, engine set-up without a compiler, retrain with cancel/resume, predict, retrain on SLURM, untrusted browsing', { timeout: 18 * 60_000 }, async (t) => {
  const root = scratch(t, 'cfr-e2e-');
  const workspace = await sampleWorkspace(root);
  const profile: Profile = makeProfile(vsix, { theme: 'Default Dark Modern', workspaceTrust: false });
  // The editor runs as on a cluster's login node without a compiler, make or Node.js headers (/usr/bin has
  // them beside node): only what engine set-up then uses, pip's Python and npm, SLURM's commands, and its own engine folder.
  const engineRoot = path.join(root, 'engine');
  const commands = ['node', 'npm', 'python3', 'tar', 'gzip', 'sbatch', 'squeue', 'sinfo', 'scancel', 'scontrol'];
  profile.env = { ...profile.env, PATH: pathWithOnly(t, commands), CELLFINDER_RETRAIN_ENGINE_DIR: engineRoot, npm_config_nodedir: scratch(t) };
  let server = await CodeServer.start(profile, workspace, { askTrust: false });
  t.after(() => server.stop('SIGKILL'));
  let workbench = await Workbench.open(browser, server);

  try {
    // 1. The Cellfinder view lists the datasets with their counts.
    await workbench.openCellfinder();
    await workbench.treeRow('labelled').locator('.label-description', { hasText: '2 cells · 2 non-cells' }).waitFor({ timeout: 30_000 });
    await workbench.treeRow('round1').locator('.label-description', { hasText: '0 cells · 0 non-cells' }).waitFor();
    await workbench.screenshot(SHOTS, '1-sidebar-dark');

    // 2. Extract Cubes from Candidates: the sample volumes and detection points through the editor's
    // own file dialogs (code-server's: a path box with an OK button), into a new dataset folder.
    await workbench.runCommand('Cellfinder: Extract Cubes from Candidates');
    await workbench.pickPath(path.join(workspace, 'sample', 'signal'));
    await workbench.pickPath(path.join(workspace, 'sample', 'background'));
    await workbench.pickPath(path.join(workspace, 'sample', 'candidates', 'candidates.xml'));
    await workbench.answerQuickInput(['type:5 2 2', 'Enter']);
    await workbench.answerQuickInput(['type:New folder in the workspace', 'Enter']);
    await workbench.answerQuickInput(['Control+a', 'type:extracted', 'Enter']);
    // Detection marks every candidate type 1, so they become non-cells; 13 of the 38 lie far enough from the edges.
    const extractedMessage = workbench.page.locator('.notification-toast', { hasText: '13 cube(s) added to extracted (0 cells, 13 non-cells), 25 skipped near the edge' });
    await extractedMessage.waitFor({ timeout: 60_000 });
    await workbench.treeRow('extracted').locator('.label-description', { hasText: '0 cells · 13 non-cells' }).waitFor({ timeout: 15_000 });
    await workbench.screenshot(SHOTS, '2-extracted-dark');
    assert.equal((await cubeFiles(path.join(workspace, 'extracted', NON_CELLS_FOLDER))).length, 26, '13 cubes, two channels each');
    assert.equal((await TrainingDataset.open(path.join(workspace, 'extracted'))).root, path.join(workspace, 'extracted'));
    await extractedMessage.locator('.codicon-notifications-clear').click();

    // 3. Label by keyboard: Y, N, Y, then U undoes the last; each decision is on disk at once.
    await workbench.openLabelling('round1');
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
    // The tree follows each saved decision (the view tells it; VS Code's file watcher may not be running).
    await workbench.treeRow('round1').locator('.label-description', { hasText: '1 cells · 1 non-cells' }).waitFor({ timeout: 15_000 });
    await workbench.screenshot(SHOTS, '3-labelling-dark');

    // Close the tab and reopen: it continues at the first candidate still to do.
    await workbench.page.locator('.tab', { hasText: 'Label: candidates.xml' }).locator('.codicon-close').click();
    await workbench.openLabelling('round1');
    await workbench.webview().locator('#progress', { hasText: /^2 of 13 decided/ }).waitFor();
    assert.match((await workbench.webview().locator('#candidate-name').textContent()) ?? '', /^Candidate 3 of 13/);

    // One more label, then kill -9 the editor mid-session: the label is on disk, and the view shows it after a restart.
    await workbench.webview().locator('#channel-0').click();
    await workbench.page.keyboard.press('n');
    // Killed as soon as the page says the decision is saved.
    await workbench.webview().locator('#progress', { hasText: /^3 of 13 decided · all saved/ }).waitFor();
    assert.deepEqual(workbench.webviewErrors, []);
    await server.stop('SIGKILL');
    await workbench.page.close();
    assert.equal((await cubeFiles(path.join(round1, NON_CELLS_FOLDER))).length, 4);
    server = await CodeServer.start(profile, workspace, { askTrust: false });
    workbench = await Workbench.open(browser, server);
    await workbench.openLabelling('round1');
    await workbench.webview().locator('#progress', { hasText: /^3 of 13 decided/ }).waitFor();

    // Set up the engine from the palette: TensorFlow's wheel from PyPI under the addon the VSIX ships, no compiling.
    await workbench.runCommand('Cellfinder: Set Up Training Engine');
    await workbench.answerQuickInput(['type:CPU engine', 'Enter']);
    await workbench.page.locator('.notification-toast', { hasText: 'Cellfinder: native engine ready' }).waitFor({ timeout: 300_000 });
    const engine = readActiveEngine(engineRoot);
    assert.ok(engine.ok, engine.ok ? '' : engine.reason);
    assert.equal(engine.manifest.addonBuild?.kind, 'shipped');

    // 4. Retrain Network from the palette, a tiny run: ResNet-18, 12 epochs of batch 1 on the labelled dataset.
    await workbench.runCommand('Cellfinder: Retrain Network');
    const answer = (keys: string[]) => workbench.answerQuickInput(keys);
    // Datasets: the first readable one ("extracted") comes ticked; the user clicks it off and "labelled" on.
    await workbench.toggleQuickPickRow('extracted');
    await workbench.toggleQuickPickRow('labelled');
    await answer(['Enter']);
    await answer(['type:From scratch', 'Enter']);
    await answer(['type:ResNet-18', 'Enter']);
    await answer(['Control+a', 'type:12', 'Enter']);
    await answer(['Control+a', 'type:1', 'Enter']);
    await answer(['Enter']);
    await answer(['Enter']);
    await answer(['Enter']);
    // sbatch is on PATH, so the editor asks where to train: here first.
    await answer(['type:This machine', 'Enter']);
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
    await workbench.treeRow('model.keras').locator('.label-description', { hasText: 'ResNet-18' }).waitFor({ timeout: 15_000 });
    await workbench.screenshot(SHOTS, '4-training-finished-dark');
    // The model files load, in our engine and in Keras 3 with cellfinder's own network, to the same predictions.
    const runFolder = (await fs.readdir(path.join(workspace, 'runs')))[0];
    const modelFile = path.join(workspace, 'runs', runFolder, 'model.keras');
    const ours = await ourCellProbabilities(modelFile, 18, 2);
    const keras = kerasCellProbabilities(modelFile, 18, 2);
    ours.forEach((p, i) => assert.ok(Math.abs(p - keras[i]) < 1e-4, `cube ${i}: ours ${p}, Keras ${keras[i]}`));

    // 5. Predict the candidates with the new model: the view orders them most uncertain first.
    await workbench.openLabelling('round1');
    await workbench.webview().locator('#choose-model').click();
    await workbench.page.locator('.quick-input-widget .monaco-list-row', { hasText: 'model.keras' }).first().waitFor();
    await workbench.page.keyboard.type('model.keras');
    await workbench.page.keyboard.press('Enter');
    await workbench.webview().locator('#prediction', { hasText: 'p(cell)' }).waitFor({ timeout: 120_000 });
    assert.equal(await workbench.webview().locator('#order').evaluate((select) => (select as HTMLElement & { value: string }).value), 'uncertain-first');
    // The set remembers the predictions, so reopening the dataset keeps this order.
    const remembered = JSON.parse(await fs.readFile(path.join(round1, 'labelling.json'), 'utf8')) as { predictions?: string };
    assert.match(remembered.predictions ?? '', /classified_points\.csv$/);
    await workbench.screenshot(SHOTS, '5-predicted-dark');

    // 6. Retrain Network again, as a SLURM job: the same answers, 3 epochs, then "Submit to SLURM" and its form.
    await workbench.runCommand('Cellfinder: Retrain Network');
    await answer(['Enter']);
    await answer(['type:From scratch', 'Enter']);
    await answer(['type:ResNet-18', 'Enter']);
    await answer(['Control+a', 'type:3', 'Enter']);
    await answer(['Control+a', 'type:1', 'Enter']);
    await answer(['Enter']);
    await answer(['Enter']);
    await answer(['Enter']);
    await answer(['type:Submit to SLURM', 'Enter']);
    await answer(['type:Time limit', 'Enter']);
    await answer(['Control+a', 'type:20', 'Enter']);
    // The form shows the partition sinfo names as the default, and the sbatch options it will submit.
    await workbench.page.locator('.quick-input-widget .monaco-list-row', { hasText: 'cluster default (cpu)' }).waitFor();
    await workbench.page.locator('.quick-input-widget .monaco-list-row', { hasText: '--time=20' }).waitFor();
    await workbench.screenshot(SLURM_SHOTS, 'vscode-slurm-form-dark');
    await answer(['type:Submit the job', 'Enter']);
    const slurmPanel = workbench.webview();
    const jobRow = slurmPanel.locator('#job');
    await jobRow.filter({ hasText: /^SLURM job \d+: (pending|running on node \S+)$/ }).waitFor({ timeout: 30_000 });
    const jobId = /^SLURM job (\d+)/.exec((await jobRow.textContent()) ?? '')?.[1];
    const slurmRun = path.join(workspace, 'runs', (await slurmPanel.locator('#run-name').textContent()) ?? '');
    assert.deepEqual((await readJobRecords(slurmRun)).map((record) => record.jobId), [jobId], 'the panel shows the job the run folder records');
    // The job starts in the run folder (which the nodes see), not wherever the editor was started, and runs the
    // run's settings file as a terminal run would (SLURM's output files read as its output).
    const batchScript = await fs.readFile(path.join(slurmRun, SLURM_SCRIPT_FILE), 'utf8');
    assert.match(batchScript, new RegExp(`^#SBATCH --chdir=${slurmRun}$`, 'm'));
    assert.match(batchScript, new RegExp(`^exec \\S+ \\S+ train --config ${path.join(slurmRun, TRAIN_CONFIG_FILE)}$`, 'm'));
    // The job's events reach the panel as a local run's do: the curve, then an epoch row, while it runs on the node.
    await slurmPanel.locator('#epochs tbody tr').first().waitFor({ timeout: 180_000 });
    await jobRow.filter({ hasText: /^SLURM job \d+: running on node \S+$/ }).waitFor({ timeout: 15_000 });
    await slurmPanel.locator('#run-status', { hasText: 'running' }).waitFor({ timeout: 1_000 });
    assert.ok(Number(await slurmPanel.locator('#loss-chart').getAttribute('data-points')) > 0, 'the loss curve has points');
    await workbench.screenshot(SLURM_SHOTS, 'vscode-training-slurm-running-dark');
    await slurmPanel.locator('#run-status', { hasText: 'finished' }).waitFor({ timeout: 180_000 });
    await jobRow.filter({ hasText: `SLURM job ${jobId}: completed on node` }).waitFor({ timeout: 30_000 });
    assert.equal(await slurmPanel.locator('#epochs tbody tr').count(), 3);
    assert.match(await fs.readFile(path.join(slurmRun, EVENTS_FILE), 'utf8'), /"type":"finished"/);
    await fs.access(path.join(slurmRun, 'model.keras'));
    // The form's answers are remembered in the workspace's settings for the next submission.
    const settings = JSON.parse(await fs.readFile(path.join(workspace, '.vscode', 'settings.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(settings['cellfinder.slurm.time'], '20');
    await workbench.openCellfinder();
    await workbench.treeRow(path.basename(slurmRun)).locator('.label-description', { hasText: `finished · 3 epoch(s)` }).filter({ hasText: `SLURM job ${jobId}: completed on node` }).waitFor({ timeout: 30_000 });
    await workbench.screenshot(SLURM_SHOTS, 'vscode-training-slurm-finished-dark');
    assert.deepEqual(workbench.webviewErrors, []);
    await workbench.page.close();
    await server.stop();

    // 7. The same workspace, untrusted, in the light theme: the views browse, the palette offers no training.
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
    await workbench.screenshot(SHOTS, '7-untrusted-light');
    await workbench.page.close();
  } catch (error) {
    // CI shows only the log: say what the editor showed when the step failed.
    throw new Error(`${(error as Error).message}\n${await workbench.visibleText()}`, { cause: error });
  }
});
