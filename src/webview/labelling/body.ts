/** The labelling page's markup; `main.ts` fills it in. */
export const LABELLING_BODY = `
<header class="toolbar">
  <div class="title"><strong id="title">Labelling</strong> <span id="progress" class="muted"></span></div>
  <div class="controls">
    <label for="order">Order</label>
    <vscode-single-select id="order" aria-label="Candidate order">
      <vscode-option value="file">In file order</vscode-option>
      <vscode-option value="uncertain-first">Most uncertain first</vscode-option>
      <vscode-option value="predicted-cells-first">Predicted cells first</vscode-option>
    </vscode-single-select>
    <vscode-button id="choose-model" secondary title="Run a model on these candidates to get its predictions">Predict with model…</vscode-button>
    <vscode-button id="help-button" secondary title="Keyboard shortcuts (?)">? Keys</vscode-button>
  </div>
</header>
<div id="busy" class="busy" hidden></div>
<div id="error" class="error" role="alert" hidden></div>
<main class="layout">
  <section class="viewer" aria-label="Current candidate">
    <div class="candidate-line">
      <span id="candidate-name" class="candidate-name"></span>
      <vscode-badge id="status-badge"></vscode-badge>
      <span id="prediction" class="prediction"></span>
    </div>
    <div class="panes" id="panes">
      <figure><figcaption id="channel-0-name">Signal</figcaption><canvas id="channel-0" width="50" height="50"></canvas></figure>
      <figure id="channel-1-figure"><figcaption id="channel-1-name">Background</figcaption><canvas id="channel-1" width="50" height="50"></canvas></figure>
      <figure id="context-figure"><figcaption>Context (plane <span id="context-z"></span>, cube outlined)</figcaption><canvas id="context" width="100" height="100"></canvas></figure>
    </div>
    <div class="decisions">
      <vscode-button id="decide-cell" title="Y">Cell <kbd>Y</kbd></vscode-button>
      <vscode-button id="decide-no-cell" title="N">Non-cell <kbd>N</kbd></vscode-button>
      <vscode-button id="decide-skip" secondary title="S">Skip <kbd>S</kbd></vscode-button>
      <vscode-button id="undo" secondary title="U or Ctrl+Z">Undo <kbd>U</kbd></vscode-button>
      <vscode-button id="previous" secondary title="Left arrow">← Previous</vscode-button>
      <vscode-button id="next" secondary title="Right arrow">Next →</vscode-button>
    </div>
    <div class="view-controls">
      <label for="z-slider">z <span id="z-value"></span></label>
      <input type="range" id="z-slider" min="0" max="19" value="10" aria-label="z plane">
      <vscode-checkbox id="max-projection" title="M">Max projection (M)</vscode-checkbox>
      <vscode-checkbox id="auto-contrast" checked title="A">Auto contrast (A)</vscode-checkbox>
      <label for="contrast-min">min</label><vscode-textfield id="contrast-min" class="number" disabled></vscode-textfield>
      <label for="contrast-max">max</label><vscode-textfield id="contrast-max" class="number" disabled></vscode-textfield>
      <vscode-button id="zoom-out" secondary title="Zoom out (-)">−</vscode-button>
      <vscode-button id="zoom-in" secondary title="Zoom in (+)">+</vscode-button>
    </div>
  </section>
  <aside class="side">
    <h2>Training-data balance</h2>
    <p class="muted" id="balance-hint"></p>
    <table class="balance" id="balance">
      <tbody>
        <tr data-category="cellsPredictedCell"><th>Cells the model got right</th><td class="count"></td><td><div class="bar"><div></div></div></td></tr>
        <tr data-category="cellsPredictedNonCell"><th>Cells it missed</th><td class="count"></td><td><div class="bar"><div></div></div></td></tr>
        <tr data-category="nonCellsPredictedNonCell"><th>Artefacts it rejected</th><td class="count"></td><td><div class="bar"><div></div></div></td></tr>
        <tr data-category="nonCellsPredictedCell"><th>Artefacts it called cells</th><td class="count"></td><td><div class="bar"><div></div></div></td></tr>
        <tr data-category="withoutPrediction"><th>Labelled without a prediction</th><td class="count"></td><td></td></tr>
      </tbody>
    </table>
    <p id="balance-advice"></p>
    <h2>Keys</h2>
    <ul class="keys">
      <li><kbd>Y</kbd> cell · <kbd>N</kbd> non-cell · <kbd>S</kbd> skip</li>
      <li><kbd>U</kbd> / <kbd>Ctrl+Z</kbd> undo · <kbd>←</kbd> <kbd>→</kbd> move</li>
      <li><kbd>↑</kbd> <kbd>↓</kbd> / wheel: z · <kbd>M</kbd> max projection</li>
      <li><kbd>?</kbd> all keys</li>
    </ul>
    <p class="muted" id="dataset-line"></p>
  </aside>
</main>
<div id="help" class="overlay" role="dialog" aria-label="Keyboard shortcuts" hidden>
  <div class="overlay-box">
    <h2>Keyboard shortcuts</h2>
    <table>
      <tr><td><kbd>Y</kbd></td><td>Label as cell (saved at once) and go to the next candidate</td></tr>
      <tr><td><kbd>N</kbd></td><td>Label as non-cell (artefact) and go on</td></tr>
      <tr><td><kbd>S</kbd></td><td>Skip: leave unlabelled, remembered as looked at</td></tr>
      <tr><td><kbd>U</kbd>, <kbd>Ctrl+Z</kbd></td><td>Undo the last decision and go back to it</td></tr>
      <tr><td><kbd>←</kbd> <kbd>→</kbd></td><td>Previous / next candidate</td></tr>
      <tr><td><kbd>↑</kbd> <kbd>↓</kbd>, mouse wheel</td><td>Move through z</td></tr>
      <tr><td><kbd>M</kbd></td><td>Max projection on/off</td></tr>
      <tr><td><kbd>A</kbd></td><td>Auto contrast on/off</td></tr>
      <tr><td><kbd>+</kbd> <kbd>-</kbd></td><td>Zoom</td></tr>
      <tr><td><kbd>?</kbd>, <kbd>Esc</kbd></td><td>Show / hide this help</td></tr>
    </table>
  </div>
</div>
`;
