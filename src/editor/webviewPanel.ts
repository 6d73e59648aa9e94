/**
 * Creating a webview panel for one of our pages: strict CSP with a fresh
 * nonce, resources only from media/ and dist/webview/, and the page's
 * messages wired to a controller.
 */
import { randomBytes } from 'node:crypto';
import * as vscode from 'vscode';
import { pageHtml, type PageName } from '../webview/pageHtml';

export function webviewOptions(extensionUri: vscode.Uri): vscode.WebviewOptions & vscode.WebviewPanelOptions {
  return {
    enableScripts: true,
    // Keeps the page (and its prefetched cubes) alive while the tab is in the background.
    retainContextWhenHidden: true,
    localResourceRoots: [vscode.Uri.joinPath(extensionUri, 'media'), vscode.Uri.joinPath(extensionUri, 'dist', 'webview')],
  };
}

/** Loads page `name` into `webview`. */
export function loadPage(webview: vscode.Webview, extensionUri: vscode.Uri, name: PageName, body: string): void {
  webview.options = webviewOptions(extensionUri);
  webview.html = pageHtml(
    name,
    {
      cspSource: webview.cspSource,
      nonce: randomBytes(16).toString('base64'),
      scriptUri: webview.asWebviewUri(vscode.Uri.joinPath(extensionUri, 'dist', 'webview', `${name}.js`)).toString(),
      styleUri: webview.asWebviewUri(vscode.Uri.joinPath(extensionUri, 'media', 'webview.css')).toString(),
    },
    body,
  );
}
