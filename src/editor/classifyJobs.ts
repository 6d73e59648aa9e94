/**
 * Classification as SLURM jobs, from the editor: a brain from Classify, or a
 * list of brains as an array job (one task per brain), followed in a
 * progress notification with each task's state and progress; cancelling the
 * notification stops the job resumably.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import { classifyJobProgress, describeClassifyTask } from '../cluster/clusterRuns';
import { cancelArrayJob, cancelJob, jobIsActive } from '../cluster/slurm';
import { runCliJson, slurmArgs } from '../controllers/cliProcess';
import { askVoxelSizes, pickFile } from './pickers';
import { cliLocation, requireTrust } from './settings';
import { askSlurmRequest, canSubmitToSlurm } from './slurmForm';

/** As the training panel asks: a cluster's controller serves every user. */
const JOB_CHECK_MS = 10_000;

/** Follows the classify job submitted for `folder` until every task has ended, then says how each ended. */
async function followClassifyJob(folder: string, title: string): Promise<void> {
  const ended = await vscode.window.withProgress({ location: vscode.ProgressLocation.Notification, title, cancellable: true }, async (progress, token) => {
    for (;;) {
      const job = await classifyJobProgress(folder);
      if (!job) throw new Error(`no classify job was submitted for ${folder}`);
      const done = job.tasks.filter((task) => task.finished).length;
      const going = job.tasks.filter((task) => jobIsActive(task.state) && !task.finished);
      progress.report({ message: `job ${job.job.jobId}: ${done} of ${job.tasks.length} classified${going.length ? `; ${going.map(describeClassifyTask).join('; ')}` : ''}` });
      if (!going.length) return job;
      if (token.isCancellationRequested) {
        void vscode.window.showInformationMessage(`Cellfinder: ${job.job.tasks ? await cancelArrayJob(job.job.jobId, job.job.tasks) : await cancelJob(job.job.jobId)}`);
        return job;
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, JOB_CHECK_MS);
        token.onCancellationRequested(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  });
  const failed = ended.tasks.filter((task) => !task.finished);
  const summary = `Cellfinder: SLURM job ${ended.job.jobId}: ${ended.tasks.length - failed.length} of ${ended.tasks.length} classified${failed.length ? `; not finished: ${failed.map(describeClassifyTask).join('; ')}` : ''}`;
  const show = failed.length ? vscode.window.showWarningMessage : vscode.window.showInformationMessage;
  if ((await show(summary, 'Reveal Folder')) === 'Reveal Folder') await vscode.commands.executeCommand('revealFileInOS', vscode.Uri.file(folder));
}

/**
 * "Classify Brains on SLURM": a brain list (CSV: signal,background,points,
 * output_dir), a model and the data's voxel sizes, submitted as one array
 * job; its SLURM files go beside the list.
 */
export async function classifyBrainsOnSlurm(context: vscode.ExtensionContext, model?: string): Promise<void> {
  requireTrust('Classifying');
  const list = await pickFile('Brain list (CSV: signal,background,points,output_dir; one brain per line)', { 'Brain list': ['csv'] });
  if (!list) return;
  const file = model ?? (await pickFile('Model to classify with', { 'Keras model or weights': ['keras', 'h5'] }));
  if (!file) return;
  const voxelSizes = await askVoxelSizes();
  if (voxelSizes === undefined) return;
  if (!(await canSubmitToSlurm())) {
    void vscode.window.showErrorMessage('Cellfinder: a brain list is classified as a SLURM array job, and sbatch is not on PATH here: open the workspace on the cluster\'s login node (e.g. with Remote-SSH), or run cellfinder-retrain classify --brains in a terminal to classify the brains one after another here');
    return;
  }
  const request = await askSlurmRequest();
  if (!request) return;
  const folder = path.join(path.dirname(list), `classify-jobs-${new Date().toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15)}`);
  const args = ['classify', '--brains', list, file.endsWith('.keras') ? '--trained-model' : '--model-weights', file, '-o', folder];
  if (voxelSizes) args.push('--voxel-sizes', ...voxelSizes.map(String));
  await submitClassifyJob(context, [...args, ...slurmArgs(request)], folder, `Cellfinder: classifying the brains of ${path.basename(list)} on SLURM`);
}

/**
 * Submits `classify ... --slurm` (its `args`) from `folder`, where its records
 * and SLURM's files go, and follows the job there. Submitted from that folder
 * because the job starts where it was submitted, which must be a folder the
 * nodes see.
 */
export async function submitClassifyJob(context: vscode.ExtensionContext, args: readonly string[], folder: string, title: string): Promise<void> {
  await fs.mkdir(folder, { recursive: true });
  await runCliJson(cliLocation(context), args, { cwd: folder });
  await followClassifyJob(folder, title);
}
