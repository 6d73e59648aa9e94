/**
 * The HTML shell of every webview page: a strict Content-Security-Policy
 * (scripts only with this load's nonce, styles and images only from the
 * extension's own resources), the page's stylesheet and script bundle, and
 * the page body. Used by the extension host and by the headless-browser
 * harness alike, so the tests load exactly what users load.
 */

export type PageName = 'labelling' | 'training';

export interface PageResources {
  /** `webview.cspSource` in VS Code; the harness's own origin in tests. */
  cspSource: string;
  /** A fresh random value per load. */
  nonce: string;
  /** URI of `dist/webview/<page>.js`. */
  scriptUri: string;
  /** URI of `media/<page>.css`. */
  styleUri: string;
}

const TITLES: Record<PageName, string> = {
  labelling: 'Cellfinder labelling',
  training: 'Cellfinder training',
};

export function pageHtml(page: PageName, resources: PageResources, body: string): string {
  const csp = [
    "default-src 'none'",
    `img-src ${resources.cspSource} data: blob:`,
    `style-src ${resources.cspSource} 'unsafe-inline'`,
    `font-src ${resources.cspSource}`,
    `script-src 'nonce-${resources.nonce}'`,
  ].join('; ');
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="${csp}">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>${TITLES[page]}</title>
<link rel="stylesheet" href="${resources.styleUri}">
</head>
<body class="page-${page}">
${body}
<script nonce="${resources.nonce}" src="${resources.scriptUri}"></script>
</body>
</html>`;
}
