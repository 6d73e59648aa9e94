/** The training panel's markup; `main.ts` fills it in. */
export const TRAINING_BODY = `
<header class="toolbar">
  <div class="title"><strong id="run-name">Training run</strong> <vscode-badge id="run-status"></vscode-badge> <span id="run-backend" class="muted"></span></div>
  <div class="controls">
    <vscode-button id="cancel" secondary title="Stop after the current batch, keeping a resumable checkpoint">Cancel</vscode-button>
    <vscode-button id="resume" title="Continue from the checkpoint with the optimiser state">Resume</vscode-button>
    <vscode-button id="classify" title="Classify candidates with the new model">Classify with new model</vscode-button>
    <vscode-button id="evaluate" secondary title="Accuracy and confusion matrix on the training data">Evaluate</vscode-button>
    <vscode-button id="reveal" secondary>Reveal output</vscode-button>
  </div>
</header>
<div id="busy" class="busy" hidden></div>
<div id="error" class="error" role="alert" hidden></div>
<div id="warnings" class="warning" role="status" hidden></div>
<section class="summary-grid" aria-label="Run summary">
  <div><span>Model</span><strong id="model"></strong></div>
  <div><span>Cubes (train / validation)</span><strong id="samples"></strong></div>
  <div class="wide"><span>Starting point</span><strong id="start"></strong></div>
  <div><span>Epoch</span><strong id="epoch"></strong></div>
  <div><span>Elapsed</span><strong id="elapsed"></strong></div>
  <div><span>Remaining (estimate)</span><strong id="eta"></strong></div>
  <div><span>Output</span><strong id="output"></strong></div>
  <div class="wide" id="job-row" hidden><span>Cluster</span><strong id="job"></strong></div>
</section>
<vscode-progress-bar id="epoch-progress" value="0" max="1" aria-label="Progress of the current epoch"></vscode-progress-bar>
<section class="charts">
  <div><h2>Loss</h2><div class="chart-box"><canvas id="loss-chart" aria-label="Loss per epoch"></canvas></div></div>
  <div><h2>Accuracy</h2><div class="chart-box"><canvas id="accuracy-chart" aria-label="Accuracy per epoch"></canvas></div></div>
</section>
<h2>Epochs</h2>
<table class="plain" id="epochs">
  <thead><tr><th>Epoch</th><th>loss</th><th>accuracy</th><th>val_loss</th><th>val_accuracy</th><th>learning rate</th><th>seconds</th></tr></thead>
  <tbody></tbody>
</table>
<section id="evaluation" hidden>
  <h2>Evaluation</h2>
  <div class="confusion-grid" id="evaluation-results"></div>
</section>
`;
