/**
 * The Models view in a real VS Code (code-server): clicking a model opens its
 * card in VS Code's own Markdown preview, without the front matter; the
 * context menu of a .keras model holds the sharing commands. Screenshot:
 * docs/e2e/5-model-card-dark.png.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { writeKerasModel } from '../src/training/modelFiles';
import { initialWeights, resnetSpec } from '../src/training/resnet';
import { REPO_ROOT, scratch } from '../test/helpers';
import { CodeServer, launchChromium, makeProfile, packageExtension, Workbench } from './codeServer';

const SHOTS = path.join(REPO_ROOT, 'docs', 'e2e');

test('the Models view shows a model\'s card rendered, and offers export, publish and fetch', { timeout: 10 * 60_000 }, async (t) => {
  const workspace = scratch(t, 'cfr-e2e-models-');
  const model = path.join(workspace, 'shared', 'model.keras');
  await fs.mkdir(path.dirname(model), { recursive: true });
  const spec = resnetSpec(18, 2);
  await writeKerasModel(model, spec, initialWeights(tf, spec, 3));
  const card = spawnSync(process.execPath, [path.join(REPO_ROOT, 'bin', 'cellfinder-retrain.js'), 'model', 'card', model], { encoding: 'utf8' });
  assert.equal(card.status, 0, card.stderr);

  const browser = await launchChromium();
  t.after(() => browser.close());
  const server = await CodeServer.start(makeProfile(packageExtension(), { theme: 'Default Dark Modern', workspaceTrust: false }), workspace, { askTrust: false });
  t.after(() => server.stop('SIGKILL'));
  const workbench = await Workbench.open(browser, server);
  try {
    await workbench.openCellfinder();
    const row = workbench.treeRow('model.keras');
    await row.waitFor({ timeout: 30_000 });
    await row.click();
    const preview = workbench.webview();
    await preview.locator('h1', { hasText: 'Model card for model.keras' }).waitFor({ timeout: 30_000 });
    assert.equal(await preview.locator('text=cellfinder_retrain').count(), 0, 'the front matter is not shown');
    await workbench.page.waitForTimeout(1000);
    await workbench.screenshot(SHOTS, '5-model-card-dark');

    await row.click({ button: 'right' });
    const menu = workbench.page.locator('.context-view .monaco-menu');
    for (const entry of ['Show Model Card', 'Write Model Card', 'Export for the Hugging Face Hub…', 'Export for the BioImage Model Zoo…', 'Publish to the Hugging Face Hub…']) {
      await menu.locator('.action-label', { hasText: entry }).first().waitFor({ timeout: 10_000 });
    }
    await workbench.screenshot(SHOTS, '6-model-menu-dark');
    await workbench.page.keyboard.press('Escape');
  } catch (error) {
    await workbench.screenshot(SHOTS, 'failed-models-dark').catch(() => undefined);
    throw new Error(`${(error as Error).message}\n${await workbench.visibleText()}`);
  }
});
