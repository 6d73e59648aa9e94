/**
 * The "Submit to SLURM" form of Retrain Network: what the job asks SLURM for,
 * prefilled from the workspace's `cellfinder.slurm.*` settings and saved back
 * there on submit, the partitions read from sinfo. One quick pick lists every
 * option with its value; choosing one edits it, "Submit" submits.
 */
import { execFile } from 'node:child_process';
import * as vscode from 'vscode';
import { listPartitions, sbatchOptions, SlurmError, type SlurmRequest } from '../cluster/slurm';

const SETTINGS = 'cellfinder.slurm';

/** Whether this machine can submit jobs (sbatch on PATH, as on a cluster's login node). */
export function canSubmitToSlurm(): Promise<boolean> {
  return new Promise((resolve) => execFile('sbatch', ['--version'], (error) => resolve(!error)));
}

const LAST_PLACE_KEY = 'cellfinder.lastRanOnSlurm';

/**
 * Where a run or classification goes: this machine, or (where sbatch is on
 * PATH, as on a cluster's login node) a SLURM job with what the form asks
 * for. Undefined for this machine, null when the user gave up. The last
 * choice is offered first.
 */
export async function askWhereToRun(context: vscode.ExtensionContext, title: string): Promise<SlurmRequest | undefined | null> {
  if (!(await canSubmitToSlurm())) return undefined;
  const here = { label: 'This machine', description: 'a background process here', slurm: false };
  const cluster = { label: 'Submit to SLURM', description: 'a job on the cluster, followed here', slurm: true };
  const lastOnSlurm = context.workspaceState.get<boolean>(LAST_PLACE_KEY, false);
  const picked = await vscode.window.showQuickPick(lastOnSlurm ? [cluster, here] : [here, cluster], { title });
  if (!picked) return null;
  await context.workspaceState.update(LAST_PLACE_KEY, picked.slurm);
  return picked.slurm ? ((await askSlurmRequest()) ?? null) : undefined;
}

/** The request saved in the workspace's settings. */
export function savedSlurmRequest(): SlurmRequest {
  const settings = vscode.workspace.getConfiguration(SETTINGS);
  const text = (key: string) => settings.get<string>(key)?.trim() || undefined;
  const cpus = settings.get<number>('cpus');
  return {
    partition: text('partition'),
    gres: text('gres'),
    cpus: cpus ? cpus : undefined,
    mem: text('mem'),
    time: text('time'),
    account: text('account'),
    extraLines: settings.get<string[]>('extraLines')?.filter((line) => line.trim() !== ''),
    requeue: settings.get<boolean>('requeue') ?? false,
  };
}

async function saveSlurmRequest(request: SlurmRequest): Promise<void> {
  const settings = vscode.workspace.getConfiguration(SETTINGS);
  const target = vscode.ConfigurationTarget.Workspace;
  await settings.update('partition', request.partition ?? '', target);
  await settings.update('gres', request.gres ?? '', target);
  await settings.update('cpus', request.cpus ?? 0, target);
  await settings.update('mem', request.mem ?? '', target);
  await settings.update('time', request.time ?? '', target);
  await settings.update('account', request.account ?? '', target);
  await settings.update('extraLines', request.extraLines ?? [], target);
  await settings.update('requeue', request.requeue ?? false, target);
}

/** One option of the form: how it is shown and how it is edited. */
interface Field {
  label: string;
  value(request: SlurmRequest): string | undefined;
  edit(request: SlurmRequest): Promise<SlurmRequest | undefined>;
}

/** An input box whose value sbatch must accept (checked as the submission will check it). */
async function askText(title: string, value: string | undefined, placeholder: string, apply: (text: string | undefined) => SlurmRequest): Promise<SlurmRequest | undefined> {
  const text = await vscode.window.showInputBox({
    title,
    value: value ?? '',
    placeHolder: placeholder,
    prompt: 'Empty: the cluster\'s default',
    validateInput: (input) => {
      try {
        sbatchOptions(apply(input.trim() || undefined));
        return undefined;
      } catch (error) {
        return error instanceof SlurmError ? error.problem : String(error);
      }
    },
  });
  return text === undefined ? undefined : apply(text.trim() || undefined);
}

function fields(partitions: Awaited<ReturnType<typeof listPartitions>>): Field[] {
  return [
    {
      label: 'Partition',
      value: (r) => r.partition ?? `cluster default${partitions.find((p) => p.isDefault) ? ` (${partitions.find((p) => p.isDefault)?.name})` : ''}`,
      edit: async (r) => {
        const picked = await vscode.window.showQuickPick(
          [{ label: 'Cluster default', description: '--partition left out', name: undefined as string | undefined }, ...partitions.map((p) => ({ label: p.name, description: [p.isDefault && 'default', p.availability !== 'up' && p.availability].filter(Boolean).join(' · '), name: p.name as string | undefined }))],
          { title: 'Partition (from sinfo)' },
        );
        return picked && { ...r, partition: picked.name };
      },
    },
    { label: 'GPUs (--gres)', value: (r) => r.gres, edit: (r) => askText('GPUs: generic resources (--gres)', r.gres, 'gpu:1', (gres) => ({ ...r, gres })) },
    {
      label: 'CPUs',
      value: (r) => r.cpus?.toString(),
      edit: (r) => askText('CPUs for the job (--cpus-per-task)', r.cpus?.toString(), '8', (cpus) => ({ ...r, cpus: cpus === undefined ? undefined : Number(cpus) })),
    },
    { label: 'Memory', value: (r) => r.mem, edit: (r) => askText('Memory (--mem)', r.mem, '32G', (mem) => ({ ...r, mem })) },
    { label: 'Time limit', value: (r) => r.time, edit: (r) => askText('Time limit (--time); the run stops resumably 5 minutes before it', r.time, '12:00:00', (time) => ({ ...r, time })) },
    { label: 'Account', value: (r) => r.account, edit: (r) => askText('Account (--account)', r.account, 'mylab', (account) => ({ ...r, account })) },
    {
      label: 'Extra sbatch lines',
      value: (r) => r.extraLines?.join('; ') || undefined,
      edit: (r) => askText('Extra sbatch options, separated by ";"', r.extraLines?.join('; '), '--qos=long; --constraint=a100', (text) => ({ ...r, extraLines: text?.split(';').map((line) => line.trim()).filter(Boolean) })),
    },
    {
      label: 'Requeue',
      value: (r) => (r.requeue ? 'yes: SLURM may requeue it (preemption, node failure); each start resumes the run' : 'no'),
      edit: async (r) => ({ ...r, requeue: !r.requeue }),
    },
  ];
}

/**
 * Asks what the job needs, starting from the workspace's saved request;
 * returns it (and saves it for next time) on Submit, undefined on Escape.
 * sinfo's failure (the cluster not answering) is shown as an error.
 */
export async function askSlurmRequest(): Promise<SlurmRequest | undefined> {
  const partitions = await listPartitions();
  const form = fields(partitions);
  let request = savedSlurmRequest();
  for (;;) {
    const submit = { label: '$(cloud-upload) Submit the job', description: sbatchOptions(request).join(' ') || 'the cluster\'s defaults', field: undefined as Field | undefined };
    const picked = await vscode.window.showQuickPick([submit, ...form.map((field) => ({ label: field.label, description: field.value(request) ?? '–', field }))], {
      title: 'Submit to SLURM: choose an option to change it',
    });
    if (!picked) return undefined;
    if (!picked.field) {
      await saveSlurmRequest(request);
      return request;
    }
    request = (await picked.field.edit(request)) ?? request;
  }
}
