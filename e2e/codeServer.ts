/**
 * A real VS Code for the end-to-end tests: code-server (installed by
 * scripts/e2e-setup.sh) with our extension installed from its VSIX, a fresh
 * profile, on a workspace folder, driven through headless Chromium like a
 * user drives it. See ../shared/reference/real-vscode-e2e.md for the facts.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import * as path from 'node:path';
import { chromium, type Browser, type Frame, type FrameLocator, type Page } from 'playwright-core';
import { REPO_ROOT } from '../test/helpers';
import { CHROMIUM } from '../test/webview/harness';

const CODE_SERVER_PACKAGE = path.join(process.env.CELLFINDER_E2E_CODE_SERVER_DIR ?? path.join(homedir(), '.cache', 'cellfinder-retrain', 'code-server'), 'node_modules', 'code-server');
export const CODE_SERVER = path.join(CODE_SERVER_PACKAGE, 'out', 'node', 'entry.js');

/** Builds the VSIX as a user gets it (`vsce package`, bundled, no node_modules). */
export function packageExtension(): string {
  const vsix = path.join(mkdtempSync(path.join(tmpdir(), 'cfr-vsix-')), 'cellfinder-retrain.vsix');
  const vsce = path.join(REPO_ROOT, 'node_modules', '.bin', 'vsce');
  const run = spawnSync(vsce, ['package', '--no-dependencies', '--allow-missing-repository', '--skip-license', '--no-rewrite-relative-links', '-o', vsix], { cwd: REPO_ROOT, encoding: 'utf8' });
  if (run.status !== 0) throw new Error(`vsce package failed: ${run.stderr || run.stdout}`);
  return vsix;
}

export interface Profile {
  root: string;
  userDir: string;
  extensionsDir: string;
  env: NodeJS.ProcessEnv;
}

/** A fresh profile with our VSIX installed, in the given colour theme, with workspace trust on or off. */
export function makeProfile(vsix: string, options: { theme: 'Default Dark Modern' | 'Default Light Modern'; workspaceTrust: boolean }): Profile {
  const root = mkdtempSync(path.join(tmpdir(), 'cfr-code-server-'));
  const userDir = path.join(root, 'user');
  const extensionsDir = path.join(root, 'extensions');
  mkdirSync(path.join(userDir, 'User'), { recursive: true });
  mkdirSync(extensionsDir, { recursive: true });
  writeFileSync(
    path.join(userDir, 'User', 'settings.json'),
    JSON.stringify({ 'workbench.startupEditor': 'none', 'workbench.colorTheme': options.theme, 'security.workspace.trust.enabled': options.workspaceTrust, 'extensions.autoCheckUpdates': false, 'extensions.autoUpdate': false }),
  );
  const env = { ...process.env, XDG_CONFIG_HOME: path.join(root, 'xdg-config'), XDG_DATA_HOME: path.join(root, 'xdg-data') };
  const install = spawnSync(process.execPath, [CODE_SERVER, '--user-data-dir', userDir, '--extensions-dir', extensionsDir, '--install-extension', vsix], { env, encoding: 'utf8' });
  if (install.status !== 0 || !/successfully installed/.test(install.stdout)) throw new Error(`installing the VSIX failed: ${install.stdout}\n${install.stderr}`);
  return { root, userDir, extensionsDir, env };
}

export class CodeServer {
  private constructor(
    readonly process: ChildProcess,
    readonly url: string,
    readonly log: () => string,
  ) {}

  /** `askTrust`: leave workspace trust on (VS Code asks whether to trust the folder); otherwise every folder is trusted. */
  static async start(profile: Profile, workspace: string, options: { askTrust: boolean }): Promise<CodeServer> {
    const port = 20000 + Math.floor(Math.random() * 20000);
    const args = [CODE_SERVER, '--bind-addr', `127.0.0.1:${port}`, '--auth', 'none', '--disable-telemetry', '--disable-update-check', '--disable-getting-started-override', '--user-data-dir', profile.userDir, '--extensions-dir', profile.extensionsDir];
    if (!options.askTrust) args.push('--disable-workspace-trust');
    const child = spawn(process.execPath, [...args, workspace], { env: profile.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout?.on('data', (chunk) => (output += chunk));
    child.stderr?.on('data', (chunk) => (output += chunk));
    const url = `http://127.0.0.1:${port}/?folder=${encodeURIComponent(workspace)}`;
    for (let i = 0; i < 150; i++) {
      try {
        if ((await fetch(`http://127.0.0.1:${port}/healthz`)).ok) return new CodeServer(child, url, () => output);
      } catch {
        // not listening yet
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    child.kill('SIGKILL');
    throw new Error(`code-server did not start:\n${output}`);
  }

  /** The installed code-server's version (and with it VS Code's). */
  static get version(): string {
    const manifest = JSON.parse(readFileSync(path.join(CODE_SERVER_PACKAGE, 'package.json'), 'utf8')) as { version: string };
    return manifest.version;
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    if (this.process.exitCode !== null || this.process.signalCode !== null) return;
    const exited = new Promise((resolve) => this.process.once('exit', resolve));
    this.process.kill(signal);
    await exited;
  }
}

export function launchChromium(): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking'] });
}

/** The workbench in a page, with the errors our webviews print collected. */
export class Workbench {
  /** Console errors and CSP violations from inside our webviews. */
  readonly webviewErrors: string[] = [];

  private constructor(readonly page: Page) {
    page.on('console', (message) => {
      const url = message.location().url;
      if (message.type() === 'error' && (url.includes('vscode-webview') || /Content Security Policy/i.test(message.text()))) this.webviewErrors.push(`${message.text()} (${url})`);
    });
  }

  static async open(browser: Browser, server: CodeServer): Promise<Workbench> {
    const page = await browser.newPage({ viewport: { width: 1400, height: 860 } });
    const workbench = new Workbench(page);
    await page.goto(server.url);
    await page.waitForSelector('.monaco-workbench', { timeout: 60_000 });
    return workbench;
  }

  /**
   * What the user sees in the side bar and the notifications, as text: a
   * failing step's message carries it, because CI shows only the log.
   */
  async visibleText(): Promise<string> {
    const text = async (selector: string) => (await this.page.locator(selector).first().innerText({ timeout: 2_000 }).catch((error: Error) => `(unreadable: ${error.message.split('\n')[0]})`)).trim();
    return `side bar:\n${await text('.part.sidebar')}\nnotifications:\n${await text('.notifications-toasts')}`;
  }

  /** Opens the Cellfinder view container from the activity bar. */
  async openCellfinder(): Promise<void> {
    const icon = this.page.locator('.activitybar [aria-label^="Cellfinder"]').first();
    const datasets = this.page.locator('.pane-header', { hasText: 'Datasets' }).first();
    await icon.waitFor({ timeout: 30_000 });
    // As a user would: click the icon, and if the side bar does not show the
    // views (once in CI it showed an empty container after a long run), click
    // again; the icon toggles, so each try looks at its state first.
    for (let attempt = 1; ; attempt++) {
      if ((await icon.getAttribute('aria-expanded')) !== 'true') await icon.click();
      const shown = await datasets.waitFor({ timeout: 10_000 }).then(() => true, () => false);
      if (shown) return;
      if (attempt === 3) return datasets.waitFor({ timeout: 1 });
      if ((await icon.getAttribute('aria-expanded')) === 'true') await icon.click();
    }
  }

  /** The sidebar row whose label is `label`. */
  treeRow(label: string) {
    return this.page.locator('.monaco-list-row', { has: this.page.locator('.label-name', { hasText: new RegExp(`^${label}$`) }) }).first();
  }

  /** Opens the labelling view on a dataset with the row's inline action, and waits for the first cube. */
  async openLabelling(dataset: string): Promise<void> {
    await this.openCellfinder();
    const row = this.treeRow(dataset);
    await row.hover();
    await row.locator('.action-label[aria-label="Label into This Dataset"]').click();
    await this.webview().locator('#candidate-name').filter({ hasText: 'Candidate' }).waitFor({ timeout: 30_000 });
    await this.webview().locator('#channel-0[style*="width"]').waitFor();
  }

  /** Runs a command from the palette, as a user types it. */
  async runCommand(title: string): Promise<void> {
    const quickInput = this.page.locator('.quick-input-widget');
    for (let i = 0; i < 10 && !(await quickInput.isVisible()); i++) {
      await this.page.keyboard.press('F1');
      await this.page.waitForTimeout(300);
    }
    await this.page.keyboard.type(title);
    await this.page.locator('.quick-input-widget .monaco-list-row', { hasText: title }).first().waitFor();
    await this.page.keyboard.press('Enter');
  }

  /** Answers the open quick input with keys; `type:…` types text. */
  async answerQuickInput(keys: string[]): Promise<void> {
    await this.page.locator('.quick-input-widget').waitFor({ state: 'visible' });
    await this.page.waitForTimeout(300);
    for (const key of keys) {
      if (key.startsWith('type:')) await this.page.keyboard.type(key.slice(5));
      else await this.page.keyboard.press(key);
    }
    await this.page.waitForTimeout(300);
  }

  /** Ticks or unticks a row of the open multi-select quick pick with the mouse. */
  async toggleQuickPickRow(label: string): Promise<void> {
    const row = this.page.locator('.quick-input-widget .monaco-list-row', { has: this.page.locator('.label-name', { hasText: new RegExp(`^${label}$`) }) }).first();
    await row.locator('.monaco-checkbox').click();
  }

  /**
   * Answers the editor's open dialog as a user does in code-server, whose
   * dialog is a path box: types the path, then clicks OK.
   */
  async pickPath(fullPath: string): Promise<void> {
    const box = this.page.locator('.quick-input-widget .quick-input-box input');
    await box.waitFor({ state: 'visible' });
    await this.page.waitForTimeout(300);
    await box.fill(fullPath);
    await this.page.waitForTimeout(500);
    await this.page.locator('.quick-input-widget .monaco-button', { hasText: 'OK' }).click();
    await this.page.waitForTimeout(500);
  }

  /** Titles the command palette offers for `text`. */
  async paletteEntries(text: string): Promise<string[]> {
    const quickInput = this.page.locator('.quick-input-widget');
    for (let i = 0; i < 10 && !(await quickInput.isVisible()); i++) {
      await this.page.keyboard.press('F1');
      await this.page.waitForTimeout(300);
    }
    await this.page.keyboard.type(text);
    await this.page.waitForTimeout(800);
    const entries = await this.page.locator('.quick-input-widget .monaco-list-row .label-name').allTextContents();
    await this.page.keyboard.press('Escape');
    return entries;
  }

  /** The content of the active webview editor. */
  webview(): FrameLocator {
    return this.page.frameLocator('iframe.webview.ready').frameLocator('iframe#active-frame');
  }

  /** An extension's activation time in ms as VS Code's Running Extensions editor reports it ("Activation: 93ms"), then closes that editor. */
  async activationTime(displayName: string): Promise<number> {
    await this.runCommand('Developer: Show Running Extensions');
    const row = this.page.locator('.monaco-list-row', { has: this.page.locator('.name', { hasText: displayName }) }).first();
    const text = ((await row.locator('.activation-time').textContent({ timeout: 30_000 })) ?? '').trim();
    await this.page.locator('.tab', { hasText: 'Running Extensions' }).locator('.codicon-close').click();
    const milliseconds = /([\d.]+)\s*ms/.exec(text)?.[1];
    if (!milliseconds) throw new Error(`Running Extensions shows no activation time for ${displayName}: "${text}"`);
    return Number(milliseconds);
  }

  /** The active webview's page as a frame, to run timing code inside it. */
  async webviewFrame(): Promise<Frame> {
    const outer = await (await this.page.locator('iframe.webview.ready').elementHandle())?.contentFrame();
    const inner = await (await outer?.locator('iframe#active-frame').elementHandle())?.contentFrame();
    if (!inner) throw new Error('no webview is open');
    return inner;
  }

  async screenshot(folder: string, name: string): Promise<void> {
    mkdirSync(folder, { recursive: true });
    await this.page.screenshot({ path: path.join(folder, `${name}.png`) });
  }
}
