/**
 * Labelling latency: the real labelling page in headless Chromium against the
 * real host controller and the bundled sample's candidates. Times from key
 * press to the next cube painted, for decisions (Y/N, each saved to disk) and
 * for moving with the arrow keys, and prints p50 / p95 / max.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { LabellingController } from '../src/controllers/labellingController';
import { LabellingSession } from '../src/core/labelling';
import { LABELLING_BODY } from '../src/webview/labelling/body';
import type { HostToLabelling, LabellingToHost } from '../src/webview/protocol';
import { percentile } from '../src/webview/render';
import { SAMPLE } from '../test/helpers';
import type { Browser } from 'playwright-core';
import { launchBrowser, openPage, type OpenPage } from '../test/webview/harness';

const MOVES = 200;
/** An expert takes well over this per decision; it lets prefetching run as it would between real key presses. */
const THINK_MS = 150;

/** The real labelling page on `session`'s host controller, once its first cube is painted; each key-to-paint time goes to `onPaintLatency`. */
export async function openLabellingPage(browser: Browser, session: LabellingSession, onPaintLatency: (ms: number) => void): Promise<{ controller: LabellingController; ui: OpenPage<LabellingToHost> }> {
  let sendToPage: ((message: HostToLabelling) => Promise<void>) | undefined;
  const controller = new LabellingController(session, (message) => void sendToPage?.(message), { onPaintLatency });
  const ui = await openPage<LabellingToHost>(browser, 'labelling', LABELLING_BODY, 'dark', (message, send) => {
    sendToPage = send;
    void controller.handle(message);
  });
  await ui.page.waitForFunction(() => (document.getElementById('channel-0') as HTMLCanvasElement).style.width !== '');
  return { controller, ui };
}

export async function benchLabelling(): Promise<void> {
  const datasetRoot = mkdtempSync(path.join(tmpdir(), 'cfr-bench-labelling-'));
  const browser = await launchBrowser();
  try {
    const session = await LabellingSession.open(
      { points: path.join(SAMPLE, 'candidates', 'candidates.xml'), signal: path.join(SAMPLE, 'signal'), background: path.join(SAMPLE, 'background'), voxelSizes: [5, 2, 2] },
      datasetRoot,
    );
    let latencies: number[] = [];
    const { controller, ui } = await openLabellingPage(browser, session, (ms) => latencies.push(ms));
    const press = async (key: string) => {
      await ui.page.waitForTimeout(THINK_MS);
      const painted = ui.nextMessage((m) => m.type === 'paintLatency');
      await ui.page.keyboard.press(key);
      await painted;
    };
    const rows: Array<[string, number[]]> = [];
    for (let i = 0; i < session.candidates.length - 1; i++) await press(i % 2 ? 'n' : 'y');
    await controller.settled();
    rows.push([`decision (Y/N, saved to disk), ${session.candidates.length - 1} candidates`, latencies]);
    latencies = [];
    // The last decision leaves the cursor on the last candidate: sweep left to the first and back, again and again.
    for (let i = 0; i < MOVES; i++) await press(Math.floor(i / (session.candidates.length - 1)) % 2 ? 'ArrowRight' : 'ArrowLeft');
    rows.push([`move (arrow keys), ${MOVES} moves`, latencies]);
    await ui.close();
    await controller.dispose();
    console.log(`\nLabelling page, key press to next cube painted (headless Chromium, real cubes of the bundled sample, ${THINK_MS} ms between presses)\n`);
    console.log('| action | p50 (ms) | p95 (ms) | max (ms) |');
    console.log('|---|---|---|---|');
    for (const [name, values] of rows) {
      const sorted = [...values].sort((a, b) => a - b);
      console.log(`| ${name} | ${percentile(sorted, 0.5).toFixed(1)} | ${percentile(sorted, 0.95).toFixed(1)} | ${sorted[sorted.length - 1].toFixed(1)} |`);
    }
  } finally {
    await browser.close();
    rmSync(datasetRoot, { recursive: true, force: true });
  }
}
