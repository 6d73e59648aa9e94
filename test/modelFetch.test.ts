/**
 * `model fetch` against a local HTTP server standing in for cellfinder's
 * download host and the Hugging Face Hub (this machine has no internet): a
 * verified download is kept, a mismatch is an error naming the file and both
 * hashes and keeps nothing, a local copy (--from) is checked the same way,
 * and a file already there is never replaced. The cellfinder constants are
 * checked against the cellfinder installed in the test venv.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, promises as fs, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import { test } from 'node:test';
import { main } from '../src/cli/main';
import { CELLFINDER_MODELS, cellfinderModelsFolder, fetchCellfinderModel, fetchFile, fetchHubModel, hubModelFolder, MODEL_URL_ENV, parseHubRepo } from '../src/sharing/modelFetch';
import { REPO_ROOT, scratch } from './helpers';

const sha256 = (data: Uint8Array | string) => createHash('sha256').update(data).digest('hex');
const gitBlobId = (data: Buffer) => createHash('sha1').update(`blob ${data.length}\0`).update(data).digest('hex');

async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await main(argv, { out: (text) => (out += `${text}\n`), err: (text) => (err += `${text}\n`) });
  return { code, out, err };
}

/** Serves `files` (URL path -> bytes or JSON) on 127.0.0.1; every request is recorded. */
async function serve(t: { after(fn: () => Promise<void> | void): void }, files: Map<string, Buffer | object>): Promise<{ base: string; requests: string[] }> {
  const requests: string[] = [];
  const server: Server = createServer((request, response) => {
    requests.push(request.url ?? '');
    const body = files.get(request.url ?? '');
    if (body === undefined) {
      response.writeHead(404).end('not found');
      return;
    }
    const bytes = Buffer.isBuffer(body) ? body : Buffer.from(JSON.stringify(body));
    response.writeHead(200, { 'content-length': bytes.length, 'content-type': Buffer.isBuffer(body) ? 'application/octet-stream' : 'application/json' }).end(bytes);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return { base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, requests };
}

/** Every name in `folder` and below, temporary files included. */
async function everything(folder: string): Promise<string[]> {
  if (!existsSync(folder)) return [];
  return (await fs.readdir(folder, { recursive: true })).map(String).sort();
}

test("cellfinder's URLs, file names and SHA-256 are the ones cellfinder's own download uses", () => {
  const source = readFileSync(path.join(REPO_ROOT, '.venv', 'lib', 'python3.11', 'site-packages', 'cellfinder', 'core', 'download', 'download.py'), 'utf8');
  // The venv has cellfinder 1.10.1 (PyPI's newest), which has resnet50_tv; resnet50_1ch came after it (see modelFetch.ts).
  const tv = CELLFINDER_MODELS.resnet50_tv;
  assert.match(source, new RegExp(`"resnet50_tv": "${tv.sha256}"`));
  assert.match(source, new RegExp(`"resnet50_tv": "${tv.fileName.replace('.', '\\.')}"`));
  assert.ok(source.includes(`MODEL_URL = "${path.posix.dirname(tv.url)}"`), 'the URL is MODEL_URL/resnet50_tv.h5');
  assert.match(source, /DEFAULT_DOWNLOAD_DIRECTORY = DEFAULT_CELLFINDER_DIRECTORY \/ "models"/);
  assert.equal(cellfinderModelsFolder('/home/x'), '/home/x/.brainglobe/cellfinder/models');
  assert.equal(hubModelFolder('brainglobe/some-model', '/home/x'), '/home/x/.brainglobe/cellfinder/models/hf/brainglobe/some-model');
});

test('a download is kept only when its SHA-256 matches; a mismatch names the file and both hashes and keeps nothing', async (t) => {
  const root = scratch(t);
  const good = Buffer.from('weights of a network, standing in for resnet50_tv.h5');
  const { base } = await serve(t, new Map([['/models/resnet50_tv.h5', good]]));
  const url = `${base}/models/resnet50_tv.h5`;

  // cellfinder's own hash: these bytes are not cellfinder's network.
  const models = path.join(root, 'models');
  await assert.rejects(fetchCellfinderModel({ folder: models, url }), (error: Error) => {
    assert.match(error.message, new RegExp(`${path.join(models, 'resnet50_tv.h5')}: resnet50_tv.h5 does not match its cellfinder sha256: expected ${CELLFINDER_MODELS.resnet50_tv.sha256}, got ${sha256(good)}`));
    assert.match(error.message, /Nothing was kept/);
    return true;
  });
  assert.deepEqual(await everything(models), [], 'no file and no temporary file left');

  // The same path with a hash the bytes have: kept, under the destination's name.
  const kept = await fetchFile(path.join(models, 'resnet50_tv.h5'), { url, check: { kind: 'cellfinder sha256', expected: sha256(good) } });
  assert.deepEqual(kept, { file: path.join(models, 'resnet50_tv.h5'), sha256: sha256(good), verified: 'cellfinder sha256', status: 'fetched' });
  assert.deepEqual(await fs.readFile(kept.file), good);
  assert.deepEqual(await everything(models), ['resnet50_tv.h5']);

  // There already with other bytes than cellfinder's: an error, and the file stays as it was.
  await assert.rejects(fetchCellfinderModel({ folder: models, url }), /already exists and does not match its cellfinder sha256: .*Nothing was replaced/);
  assert.deepEqual(await fs.readFile(kept.file), good);

  // The CLI: --url (and the environment variable) replace the URL, never the hash; exit 1 with the file named.
  const other = path.join(root, 'other');
  const cli = await run(['model', 'fetch', '--url', url, '-o', other]);
  assert.equal(cli.code, 1);
  assert.match(cli.err, /resnet50_tv\.h5 does not match its cellfinder sha256: expected 63d36af4/);
  process.env[MODEL_URL_ENV] = `${base}/no-such-file`;
  try {
    const missing = await run(['model', 'fetch', '-o', other]);
    assert.equal(missing.code, 1);
    assert.match(missing.err, /no-such-file: answered HTTP 404/);
  } finally {
    delete process.env[MODEL_URL_ENV];
  }
  assert.deepEqual(await everything(other), []);
});

test('--from a local file or folder (offline): checked against the hash as a download is', async (t) => {
  const root = scratch(t);
  const copy = path.join(root, 'copied-from-elsewhere');
  await fs.mkdir(copy);
  const bytes = Buffer.from('not cellfinder\'s network');
  await fs.writeFile(path.join(copy, 'resnet50_tv.h5'), bytes);
  const models = path.join(root, 'models');
  for (const from of [copy, path.join(copy, 'resnet50_tv.h5')]) {
    const cli = await run(['model', 'fetch', '--from', from, '-o', models]);
    assert.equal(cli.code, 1, cli.out);
    assert.match(cli.err, new RegExp(`resnet50_tv\\.h5 does not match its cellfinder sha256: expected ${CELLFINDER_MODELS.resnet50_tv.sha256}, got ${sha256(bytes)}`));
  }
  assert.deepEqual(await everything(models), []);
  const missing = await run(['model', 'fetch', '--from', path.join(root, 'nowhere.h5'), '-o', models]);
  assert.equal(missing.code, 1);
  assert.match(missing.err, /nowhere\.h5: does not exist/);

  // With the hash these bytes have, the local copy is kept (the same path as cellfinder's model takes).
  const kept = await fetchFile(path.join(models, 'resnet50_tv.h5'), { from: path.join(copy, 'resnet50_tv.h5'), check: { kind: 'cellfinder sha256', expected: sha256(bytes) } });
  assert.equal(kept.status, 'fetched');
  assert.deepEqual(await fs.readFile(path.join(models, 'resnet50_tv.h5')), bytes);
  // Fetched again: already there with the right bytes, nothing written.
  const again = await fetchFile(path.join(models, 'resnet50_tv.h5'), { from: path.join(copy, 'resnet50_tv.h5'), check: { kind: 'cellfinder sha256', expected: sha256(bytes) } });
  assert.equal(again.status, 'already there');
});

test('hf://ORG/NAME: every file of the revision the Hub lists, each checked (LFS SHA-256, git blob id); one bad file keeps none', async (t) => {
  const root = scratch(t);
  const weights = Buffer.from('model weights kept in LFS'.repeat(1000));
  const config = Buffer.from('{"network_depth": 18}');
  const revision = 'a'.repeat(40);
  const listing = (weightsSha: string) => ({
    id: 'lab/retrained',
    sha: revision,
    siblings: [
      { rfilename: '.gitattributes', blobId: 'x' },
      { rfilename: 'config.json', size: config.length, blobId: gitBlobId(config) },
      { rfilename: 'weights/model.keras', size: weights.length, blobId: 'pointer', lfs: { sha256: weightsSha, size: weights.length } },
    ],
  });
  const files = new Map<string, Buffer | object>([
    ['/api/models/lab/retrained?blobs=true', listing(sha256(weights))],
    ['/api/models/lab/tampered?blobs=true', { ...listing('0'.repeat(64)), id: 'lab/tampered' }],
    [`/lab/retrained/resolve/${revision}/config.json`, config],
    [`/lab/retrained/resolve/${revision}/weights/model.keras`, weights],
    [`/lab/tampered/resolve/${revision}/config.json`, config],
    [`/lab/tampered/resolve/${revision}/weights/model.keras`, weights],
  ]);
  const { base, requests } = await serve(t, files);

  const folder = path.join(root, 'hub', 'retrained');
  const fetched = await fetchHubModel('lab/retrained', { folder, endpoint: base });
  assert.equal(fetched.revision, revision);
  assert.deepEqual(
    fetched.files.map((f) => [path.relative(folder, f.file), f.verified, f.status]),
    [
      ['config.json', 'hub git blob id', 'fetched'],
      [path.join('weights', 'model.keras'), 'hub sha256', 'fetched'],
    ],
  );
  assert.deepEqual(await fs.readFile(path.join(folder, 'weights', 'model.keras')), weights);
  assert.ok(!requests.some((r) => r.includes('.gitattributes')));

  // One file whose bytes are not what the Hub lists: nothing of the repository is kept, not even the good file.
  const tamperedFolder = path.join(root, 'hub', 'tampered');
  process.env.HF_ENDPOINT = base;
  try {
    const cli = await run(['model', 'fetch', 'hf://lab/tampered', '-o', tamperedFolder]);
    assert.equal(cli.code, 1);
    assert.match(cli.err, new RegExp(`weights/model\\.keras does not match its hub sha256: expected ${'0'.repeat(64)}, got ${sha256(weights)}`));
    assert.ok(!existsSync(tamperedFolder), 'not even the folders it made are left');

    const ok = await run(['model', 'fetch', 'hf://lab/retrained', '-o', path.join(root, 'cli')]);
    assert.equal(ok.code, 0, ok.err);
    assert.match(ok.out, new RegExp(`Fetched hf://lab/retrained at revision ${revision}`));
    assert.match(ok.out, /config\.json: fetched, SHA-256 [0-9a-f]{64} \(matches the hub git blob id\)/);
    const unknown = await run(['model', 'fetch', 'hf://lab/none', '-o', path.join(root, 'none')]);
    assert.equal(unknown.code, 1);
    assert.match(unknown.err, /api\/models\/lab\/none\?blobs=true: answered HTTP 404/);
  } finally {
    delete process.env.HF_ENDPOINT;
  }

  // A downloaded copy given with --from: copied as it is when it has no card of ours ...
  const offline = await fetchHubModel('lab/retrained', { folder: path.join(root, 'offline'), from: folder });
  assert.deepEqual(offline.files.map((f) => [path.relative(path.join(root, 'offline'), f.file), f.verified]), [
    ['config.json', 'none known'],
    [path.join('weights', 'model.keras'), 'none known'],
  ]);
  // ... and checked against the hashes of the card it carries when it has one: a changed model keeps nothing.
  await fs.writeFile(path.join(folder, 'README.md'), `---\nlibrary_name: keras\ncellfinder_retrain:\n  files:\n    - path: weights/model.keras\n      sha256: ${sha256(weights)}\n---\n\n# card\n`);
  const carded = await fetchHubModel('lab/retrained', { folder: path.join(root, 'carded'), from: folder });
  assert.equal(carded.files.find((f) => f.file.endsWith('model.keras'))?.verified, 'model card sha256');
  await fs.appendFile(path.join(folder, 'weights', 'model.keras'), 'x');
  await assert.rejects(fetchHubModel('lab/retrained', { folder: path.join(root, 'changed'), from: folder }), /weights\/model\.keras does not match its model card sha256/);
  assert.ok(!existsSync(path.join(root, 'changed')));
});

test('repository names the Hub would refuse are refused before any request', async () => {
  assert.equal(parseHubRepo('hf://brainglobe/cellfinder_single_channel_default'), 'brainglobe/cellfinder_single_channel_default');
  for (const bad of ['hf://no-slash', 'hf://a/b/c', 'hf://org/na--me', 'hf://org/../x', 'hf://org/name-', 'hf://-org/name', 'hf://org/na me']) {
    assert.throws(() => parseHubRepo(bad), /is not a Hugging Face model repository name/, bad);
  }
  const cli = await run(['model', 'fetch', 'hf://bad', '--model', 'resnet50_tv']);
  assert.equal(cli.code, 2);
  const usage = await run(['model', 'fetch', '--model', 'resnet50_all']);
  assert.equal(usage.code, 2);
  assert.match(usage.err, /--model must be one of resnet50_tv, resnet50_1ch/);
});
