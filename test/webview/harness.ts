/**
 * Runs a webview page in headless Chromium as VS Code would show it: the
 * page's real HTML (same CSP, same bundle, same stylesheet, from a local HTTP
 * server standing in for the webview resource origin), VS Code's theme
 * variables, and an `acquireVsCodeApi()` bridge that passes messages to and
 * from a host handler in this process. Only that bridge is a stand-in.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { pageHtml, type PageName } from '../../src/webview/pageHtml';
import { REPO_ROOT } from '../helpers';
import { THEMES, type ThemeName } from './themes';

export const CHROMIUM = '/usr/bin/chromium';

export function chromiumAvailable(): boolean {
  return existsSync(CHROMIUM);
}

export async function launchBrowser(): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-dev-shm-usage'] });
}

const CONTENT_TYPES: Record<string, string> = { '.js': 'text/javascript', '.css': 'text/css', '.map': 'application/json' };

/** Typed arrays cannot cross into the page as-is: they travel base64-encoded and are revived there. */
function encodeForPage(value: unknown): unknown {
  if (value instanceof Float32Array) return { __float32: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('base64') };
  if (Array.isArray(value)) return value.map(encodeForPage);
  if (value && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, encodeForPage(v)]));
  return value;
}

const BRIDGE_SCRIPT = `
(() => {
  // Float32Arrays are revived while the JSON is parsed.
  const revive = (key, value) => {
    if (!value || typeof value !== 'object' || typeof value.__float32 !== 'string') return value;
    const text = atob(value.__float32);
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    return new Float32Array(bytes.buffer);
  };
  window.__deliverFromHost = (json) => window.postMessage(JSON.parse(json, revive), '*');
  window.acquireVsCodeApi = () => ({
    postMessage: (message) => window.__cellfinderToHost(message),
    getState: () => { const s = sessionStorage.getItem('vscode-state'); return s ? JSON.parse(s) : undefined; },
    setState: (state) => sessionStorage.setItem('vscode-state', JSON.stringify(state)),
  });
})();`;

export interface OpenPage<ToHost> {
  page: Page;
  /** Messages the page has sent, oldest first. */
  received: ToHost[];
  /** Delivers a host message to the page. */
  send(message: unknown): Promise<void>;
  /** Resolves with the first message (from now on) that matches. */
  nextMessage(match: (message: ToHost) => boolean, timeoutMs?: number): Promise<ToHost>;
  /** Console errors and page errors seen so far. */
  errors: string[];
  close(): Promise<void>;
}

export async function openPage<ToHost>(
  browser: Browser,
  name: PageName,
  body: string,
  theme: ThemeName,
  onMessage: (message: ToHost, send: (message: unknown) => Promise<void>) => void,
  viewport = { width: 1280, height: 820 },
): Promise<OpenPage<ToHost>> {
  const server = http.createServer((request, response) => {
    const url = new URL(request.url ?? '/', 'http://localhost');
    void (async () => {
      if (url.pathname === '/') {
        const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
        const html = pageHtml(name, { cspSource: origin, nonce: randomBytes(16).toString('base64'), scriptUri: `${origin}/dist/webview/${name}.js`, styleUri: `${origin}/media/webview.css` }, body);
        response.writeHead(200, { 'content-type': 'text/html' }).end(html);
        return;
      }
      if (url.pathname === '/favicon.ico') {
        response.writeHead(204).end();
        return;
      }
      const file = path.join(REPO_ROOT, path.normalize(url.pathname));
      if (!file.startsWith(path.join(REPO_ROOT, 'dist')) && !file.startsWith(path.join(REPO_ROOT, 'media'))) {
        response.writeHead(404).end();
        return;
      }
      try {
        const data = await fs.readFile(file);
        response.writeHead(200, { 'content-type': CONTENT_TYPES[path.extname(file)] ?? 'application/octet-stream' }).end(data);
      } catch {
        response.writeHead(404).end();
      }
    })();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const context = await browser.newContext({ viewport, deviceScaleFactor: 1 });
  const page = await context.newPage();
  const received: ToHost[] = [];
  const waiters: Array<{ match: (m: ToHost) => boolean; resolve: (m: ToHost) => void }> = [];
  const errors: string[] = [];
  page.on('console', (message) => {
    if (message.type() === 'error') errors.push(message.text());
  });
  page.on('pageerror', (error) => errors.push(error.message));
  let closed = false;
  const send = async (message: unknown) => {
    if (closed) return;
    try {
      // As one JSON string, as VS Code passes a webview message (Playwright's own argument encoding takes ~0.1 ms per value: 0.5 s for 5,000 candidates).
      await page.evaluate((json) => (window as unknown as { __deliverFromHost(json: string): void }).__deliverFromHost(json), JSON.stringify(encodeForPage(message)));
    } catch (error) {
      // A reply still on its way when the test closed the page (as when a user closes the panel) goes nowhere.
      if (!closed) throw error;
    }
  };
  await page.exposeFunction('__cellfinderToHost', (message: ToHost) => {
    received.push(message);
    for (const waiter of [...waiters]) {
      if (waiter.match(message)) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve(message);
      }
    }
    onMessage(message, send);
  });
  const { bodyClass, variables } = THEMES[theme];
  await page.addInitScript(BRIDGE_SCRIPT);
  // VS Code sets the theme as variables on <html> and a class on <body> before the page's script runs.
  await page.addInitScript(
    ({ bodyClass, variables }) => {
      const apply = () => {
        for (const [key, value] of Object.entries(variables)) document.documentElement.style.setProperty(`--vscode-${key}`, value);
        document.body?.classList.add(bodyClass);
      };
      if (document.body) apply();
      else document.addEventListener('readystatechange', apply, { once: true });
    },
    { bodyClass, variables },
  );
  await page.goto(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`);
  return {
    page,
    received,
    send,
    errors,
    nextMessage: (match, timeoutMs = 10_000) =>
      new Promise<ToHost>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no matching message from the page within ${timeoutMs} ms`)), timeoutMs);
        waiters.push({
          match,
          resolve: (message) => {
            clearTimeout(timer);
            resolve(message);
          },
        });
      }),
    close: async () => {
      if (closed) return;
      closed = true;
      await context.close();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

export const SCREENSHOTS = path.join(REPO_ROOT, 'docs', 'screenshots');
