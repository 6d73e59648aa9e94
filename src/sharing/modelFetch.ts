/**
 * Fetching a model: an explicit step the user starts (training never
 * downloads). Three sources:
 *
 * - cellfinder's pre-trained network, from the URL and with the SHA-256
 *   cellfinder's own download uses, into the folder and under the file name
 *   cellfinder uses (`~/.brainglobe/cellfinder/models/`), so that both tools
 *   find the one copy;
 * - a Hugging Face model repository (`hf://ORG/NAME`): every file of its
 *   current revision, each checked against the hash the Hub lists for it;
 * - a local file or folder (`--from`), for clusters without internet: the
 *   same checks, no network.
 *
 * Every file goes to a temporary file beside its destination, is hashed on
 * the way, and is moved into place only when every file of the fetch is
 * verified: a mismatch is an error naming the file and both hashes, and
 * nothing of the fetch is kept. A file already in place is never replaced.
 */
import { createHash } from 'node:crypto';
import { createReadStream, promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { homedir } from 'node:os';
import * as path from 'node:path';
import { discardFile, exists, moveFileNoClobber, prepareFile, type PreparedFile } from '../core/atomicFile';
import { DataFileError } from '../core/errors';
import { checkModelCard, sha256OfFile } from './modelCard';

/**
 * cellfinder's downloadable networks, as `cellfinder/core/download/download.py`
 * names, places and verifies them (read at brainglobe/cellfinder commit
 * 5aa244a, 2026-08-22; `resnet50_tv` is the same in release 1.10.1, and
 * `resnet50_1ch` was added after it). `resnet50_all` is left out: cellfinder
 * lists no hash for it, and we fetch nothing we cannot verify.
 */
export const CELLFINDER_MODELS = {
  /** cellfinder's default: signal + background, the starting point of `--continue-training`. */
  resnet50_tv: {
    fileName: 'resnet50_tv.h5',
    url: 'https://gin.g-node.org/cellfinder/models/raw/master/resnet50_tv.h5',
    sha256: '63d36af456640590ba6c896dc519f9f29861015084f4c40777a54c18c1fc4edd',
  },
  /** cellfinder's default for signal-only data (its main() picks it when there is no background). */
  resnet50_1ch: {
    fileName: 'resnet50_single_channel.keras',
    url: 'https://huggingface.co/brainglobe/cellfinder_single_channel_default/resolve/main/resnet50_single_channel.keras',
    sha256: '4c0af5e916195603266fc18686a84e7156683cbd6e91b27385e9d6e0b5ef5a55',
  },
} as const;

export type CellfinderModelName = keyof typeof CELLFINDER_MODELS;

export function isCellfinderModelName(name: string): name is CellfinderModelName {
  return Object.hasOwn(CELLFINDER_MODELS, name);
}

/**
 * Replaces the URL a cellfinder model is downloaded from (a mirror, an
 * institute's proxy, the tests' local server); the SHA-256 is still cellfinder's.
 */
export const MODEL_URL_ENV = 'CELLFINDER_RETRAIN_MODEL_URL';

/** huggingface_hub's own variable for another Hub endpoint (a mirror); we honour it the same way. */
export const HUB_ENDPOINT_ENV = 'HF_ENDPOINT';
const DEFAULT_HUB_ENDPOINT = 'https://huggingface.co';

/** cellfinder's DEFAULT_DOWNLOAD_DIRECTORY: `~/.brainglobe/cellfinder/models`. */
export function cellfinderModelsFolder(home: string = homedir()): string {
  return path.join(home, '.brainglobe', 'cellfinder', 'models');
}

export interface FetchedFile {
  file: string;
  sha256: string;
  /** How its bytes were checked: against cellfinder's hash, the Hub's LFS SHA-256 or git blob id, a model card's SHA-256, or not at all (no hash known). */
  verified: CheckKind | 'none known';
  /** 'already there': the destination held these bytes before; nothing was written. */
  status: 'fetched' | 'already there';
}

export interface FetchProgress {
  (file: string, bytesDone: number, bytesTotal: number | undefined): void;
}

export type CheckKind = 'cellfinder sha256' | 'hub sha256' | 'hub git blob id' | 'model card sha256';

/** One file to bring in: where its bytes come from, where it goes, and what its hash must be. */
interface Incoming {
  name: string;
  destination: string;
  open: () => Promise<{ chunks: AsyncIterable<Uint8Array>; bytes?: number }>;
  check?: { kind: CheckKind; expected: string };
}

/**
 * Fetches cellfinder's pre-trained network `name` into `folder` (default
 * cellfinder's own), from `from` (a local file, or a folder holding the file
 * under cellfinder's name), else from `url`, else MODEL_URL_ENV, else
 * cellfinder's URL; it must have cellfinder's SHA-256.
 */
export async function fetchCellfinderModel(
  options: { name?: CellfinderModelName; folder?: string; from?: string; url?: string; onProgress?: FetchProgress } = {},
): Promise<FetchedFile> {
  const model = CELLFINDER_MODELS[options.name ?? 'resnet50_tv'];
  const from = options.from !== undefined && (await isFolder(options.from)) ? path.join(options.from, model.fileName) : options.from;
  return fetchFile(path.join(path.resolve(options.folder ?? cellfinderModelsFolder()), model.fileName), {
    ...(from !== undefined ? { from } : { url: options.url ?? (process.env[MODEL_URL_ENV] || model.url) }),
    check: { kind: 'cellfinder sha256', expected: model.sha256 },
    onProgress: options.onProgress,
  });
}

/** One file to `destination` from a local file (`from`) or a URL, kept only when it passes `check`. */
export async function fetchFile(
  destination: string,
  source: ({ from: string } | { url: string }) & { check?: { kind: CheckKind; expected: string }; onProgress?: FetchProgress },
): Promise<FetchedFile> {
  let open: Incoming['open'];
  if ('from' in source) {
    const from = path.resolve(source.from);
    if (!(await exists(from))) throw new DataFileError(from, 'does not exist', `Give --from ${path.basename(destination)} or the folder holding it`);
    open = () => openLocal(from);
  } else open = () => openUrl(source.url, destination);
  const [fetched] = await bringIn([{ name: path.basename(destination), destination, open, check: source.check }], source.onProgress);
  return fetched;
}

/** `hf://ORG/NAME` -> `ORG/NAME`, checked as the Hub names repositories. */
export function parseHubRepo(spec: string): string {
  const repo = spec.startsWith('hf://') ? spec.slice('hf://'.length) : spec;
  const valid = /^[A-Za-z0-9][A-Za-z0-9._-]{0,95}\/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$/.test(repo) && !/(--|\.\.)/.test(repo) && !/[.-]$/.test(repo.split('/')[1]);
  if (!valid) {
    throw new DataFileError(spec, 'is not a Hugging Face model repository name', 'Write it as hf://ORG/NAME (letters, digits, "-", "_" and "."; no "--" or ".."; not ending in "-" or ".")');
  }
  return repo;
}

/** Where fetched Hub repositories go: beside cellfinder's own models, one `ORG/NAME` folder per repository. */
export function hubModelsFolder(home: string = homedir()): string {
  return path.join(cellfinderModelsFolder(home), 'hf');
}

/** Default home of a fetched Hub repository. */
export function hubModelFolder(repo: string, home: string = homedir()): string {
  return path.join(hubModelsFolder(home), ...repo.split('/'));
}

interface HubSibling {
  rfilename: string;
  size?: number;
  blobId?: string;
  lfs?: { sha256?: string; size?: number };
}

/**
 * Fetches every file of the Hugging Face model repository `repo` (ORG/NAME)
 * at its current revision into `folder` (default hubModelFolder), or, with
 * `from`, copies a downloaded copy of it from that folder (checked against
 * the card it carries, if any: see modelCard.ts).
 */
export async function fetchHubModel(
  repo: string,
  options: { folder?: string; from?: string; endpoint?: string; onProgress?: FetchProgress } = {},
): Promise<{ folder: string; revision?: string; files: FetchedFile[] }> {
  const folder = path.resolve(options.folder ?? hubModelFolder(repo));
  if (options.from !== undefined) return { folder, files: await copyFolder(path.resolve(options.from), folder, options.onProgress) };
  const endpoint = (options.endpoint ?? (process.env[HUB_ENDPOINT_ENV] || DEFAULT_HUB_ENDPOINT)).replace(/\/+$/, '');
  const listing = `${endpoint}/api/models/${repo}?blobs=true`;
  const response = await request(listing, `hf://${repo}`);
  let info: { sha?: string; siblings?: HubSibling[] };
  try {
    info = (await response.json()) as typeof info;
  } catch {
    throw new DataFileError(listing, 'did not answer with the JSON listing of a model repository', `Check the endpoint (${HUB_ENDPOINT_ENV}) and the repository name`);
  }
  // Files at the revision the listing describes, so a push during the fetch cannot mix two versions.
  const revision = info.sha ?? 'main';
  const siblings = (info.siblings ?? []).filter((s) => typeof s?.rfilename === 'string' && s.rfilename !== '.gitattributes');
  if (siblings.length === 0) throw new DataFileError(`hf://${repo}`, 'lists no files', 'Check the repository name; a private repository needs access the fetch does not have');
  const incoming = siblings.map((sibling): Incoming => {
    const destination = safeDestination(folder, sibling.rfilename, `hf://${repo}`);
    const url = `${endpoint}/${repo}/resolve/${encodeURIComponent(revision)}/${sibling.rfilename.split('/').map(encodeURIComponent).join('/')}`;
    const check = sibling.lfs?.sha256
      ? { kind: 'hub sha256' as const, expected: sibling.lfs.sha256 }
      : sibling.blobId
        ? { kind: 'hub git blob id' as const, expected: sibling.blobId }
        : undefined;
    return { name: sibling.rfilename, destination, open: () => openUrl(url, destination), check };
  });
  return { folder, revision: info.sha, files: await bringIn(incoming, options.onProgress) };
}

/** A repository's file name as a path under `folder`; a name reaching outside it is refused. */
function safeDestination(folder: string, name: string, source: string): string {
  const destination = path.resolve(folder, name);
  if (path.isAbsolute(name) || !destination.startsWith(folder + path.sep)) {
    throw new DataFileError(source, `lists a file named ${JSON.stringify(name)}, which would be written outside ${folder}`, 'Nothing was fetched; fetch only repositories you trust');
  }
  return destination;
}

async function copyFolder(from: string, folder: string, onProgress: FetchProgress | undefined): Promise<FetchedFile[]> {
  if (!(await isFolder(from))) throw new DataFileError(from, 'is not a folder', 'Give --from the folder of a downloaded copy of the repository');
  const names = await listFiles(from);
  if (names.length === 0) throw new DataFileError(from, 'holds no files', 'Give --from the folder of a downloaded copy of the repository');
  // A card of ours in the copy names the SHA-256 of the model files: those are then checked as a download's are.
  const expected = new Map<string, string>();
  for (const name of names.filter((n) => n.endsWith('.card.md') || path.basename(n) === 'README.md')) {
    const check = await checkModelCard(path.join(from, name)).catch(() => undefined);
    for (const file of check?.files ?? []) expected.set(path.resolve(file.file), file.expected);
  }
  const incoming = names.map((name): Incoming => {
    const source = path.join(from, name);
    const sha256 = expected.get(source);
    return { name, destination: safeDestination(folder, name, from), open: () => openLocal(source), check: sha256 ? { kind: 'model card sha256', expected: sha256 } : undefined };
  });
  return bringIn(incoming, onProgress);
}

async function listFiles(folder: string, prefix = ''): Promise<string[]> {
  const names: string[] = [];
  for (const entry of await fs.readdir(path.join(folder, prefix), { withFileTypes: true })) {
    if (entry.name.startsWith('.')) continue;
    const name = prefix ? path.join(prefix, entry.name) : entry.name;
    if (entry.isDirectory()) names.push(...(await listFiles(folder, name)));
    else if (entry.isFile()) names.push(name);
  }
  return names.sort();
}

async function isFolder(file: string): Promise<boolean> {
  return (await fs.stat(file).catch(() => undefined))?.isDirectory() ?? false;
}

async function openLocal(file: string): Promise<{ chunks: AsyncIterable<Uint8Array>; bytes: number }> {
  const stat = await fs.stat(file).catch((error: Error) => {
    throw new DataFileError(file, `cannot be read (${error.message})`, 'Check the path given to --from');
  });
  return { chunks: createReadStream(file), bytes: stat.size };
}

async function request(url: string, what: string): Promise<Response> {
  let response: Response;
  try {
    response = await fetch(url, { redirect: 'follow' });
  } catch (error) {
    const cause = (error as { cause?: Error }).cause?.message ?? (error as Error).message;
    throw new DataFileError(url, `cannot be reached (${cause})`, `Check the network; without internet, download ${what} elsewhere and give it with --from`);
  }
  if (!response.ok) {
    throw new DataFileError(url, `answered HTTP ${response.status} ${response.statusText}`.trim(), response.status === 401 || response.status === 404 ? 'Check the name (a private or gated repository needs access the fetch does not have)' : 'Try again later, or download it elsewhere and give it with --from');
  }
  return response;
}

async function openUrl(url: string, destination: string): Promise<{ chunks: AsyncIterable<Uint8Array>; bytes?: number }> {
  const response = await request(url, path.basename(destination));
  if (!response.body) throw new DataFileError(url, 'answered with no content', 'Try again later');
  const length = Number(response.headers.get('content-length'));
  return { chunks: response.body as unknown as AsyncIterable<Uint8Array>, bytes: Number.isFinite(length) && length > 0 ? length : undefined };
}

/**
 * Brings every file in: already-there files (same bytes) are left as they
 * are, the others are written to temporary files and hashed, then, when all
 * are verified, moved into place. On any failure every temporary file goes.
 */
async function bringIn(incoming: Incoming[], onProgress: FetchProgress | undefined): Promise<FetchedFile[]> {
  const results: FetchedFile[] = [];
  const prepared: Array<{ file: PreparedFile; result: FetchedFile }> = [];
  const createdFolders: Array<{ first: string; last: string }> = [];
  let placed = false;
  try {
    for (const item of incoming) {
      if (await exists(item.destination)) {
        results.push(await alreadyThere(item));
        continue;
      }
      const made = await createFolders(path.dirname(item.destination)).catch((error: Error) => {
        throw new DataFileError(path.dirname(item.destination), `cannot be created (${error.message})`, 'Choose a folder you can write to (-o)');
      });
      if (made) createdFolders.push({ first: made, last: path.dirname(item.destination) });
      const { chunks, bytes } = await item.open();
      let sha256 = '';
      const file = await prepareFile(item.destination, async (handle) => {
        sha256 = await writeHashing(handle, chunks, (done) => onProgress?.(item.name, done, bytes));
      });
      const result: FetchedFile = { file: item.destination, sha256, verified: item.check?.kind ?? 'none known', status: 'fetched' };
      prepared.push({ file, result });
      results.push(result);
      const actual = item.check && (await hashFor(item.check.kind, file.temp, sha256));
      if (item.check && actual !== item.check.expected) {
        throw new DataFileError(
          item.destination,
          `${item.name} does not match its ${item.check.kind}: expected ${item.check.expected}, got ${actual} (a damaged or altered download)`,
          'Nothing was kept; fetch it again, or get the file from another copy',
        );
      }
    }
    for (const { file } of prepared) await moveFileNoClobber(file.temp, file.file);
    placed = true;
    return results;
  } finally {
    for (const { file } of prepared) await discardFile(file);
    // A failed fetch leaves no trace: the folders it made go too (rmdir removes only empty ones).
    if (!placed) for (const folder of createdFolders.reverse()) await removeEmptyFolders(folder.last, folder.first);
  }
}

/** Removes `deepest` and its parents up to and including `top`, as long as each is empty. */
async function removeEmptyFolders(deepest: string, top: string): Promise<void> {
  for (let folder = deepest; folder.startsWith(top); folder = path.dirname(folder)) {
    if (!(await fs.rmdir(folder).then(() => true, () => false))) return;
    if (folder === top) return;
  }
}

/** `mkdir -p`; returns the first folder it had to make (undefined when all were there). */
async function createFolders(folder: string): Promise<string | undefined> {
  return fs.mkdir(folder, { recursive: true });
}

/** A destination that exists already: fine when it holds the expected bytes; otherwise an error, and it stays as it is. */
async function alreadyThere(item: Incoming): Promise<FetchedFile> {
  const sha256 = await sha256OfFile(item.destination);
  if (item.check) {
    const actual = await hashFor(item.check.kind, item.destination, sha256);
    if (actual !== item.check.expected) {
      throw new DataFileError(
        item.destination,
        `already exists and does not match its ${item.check.kind}: expected ${item.check.expected}, it has ${actual}`,
        'Nothing was replaced; remove or rename the file, then fetch again',
      );
    }
  }
  return { file: item.destination, sha256, verified: item.check?.kind ?? 'none known', status: 'already there' };
}

/** git's object id of a file's content: SHA-1 of "blob <size>\0" and the bytes; the Hub lists it for files not kept in LFS. */
async function gitBlobIdOfFile(file: string): Promise<string> {
  const size = (await fs.stat(file)).size;
  const hash = createHash('sha1').update(`blob ${size}\0`);
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** The hash a check compares: the file's SHA-256 (known already), or its git blob id. */
async function hashFor(kind: CheckKind, file: string, sha256: string): Promise<string> {
  return kind === 'hub git blob id' ? gitBlobIdOfFile(file) : sha256;
}

/** Writes the chunks to the open file, hashing them on the way; returns their SHA-256. */
async function writeHashing(handle: FileHandle, chunks: AsyncIterable<Uint8Array>, onProgress: (done: number) => void): Promise<string> {
  const sha256 = createHash('sha256');
  let done = 0;
  for await (const chunk of chunks) {
    sha256.update(chunk);
    await handle.write(chunk);
    done += chunk.byteLength;
    onProgress(done);
  }
  return sha256.digest('hex');
}
