/**
 * The TensorFlow addon the package ships (prebuilds/linux-x64, compiled by
 * `npm run build:addon`, which `npm test` runs first): it needs nothing newer
 * than TensorFlow's wheel (manylinux_2_27); the real set-up with it runs with
 * no compiler, make, Python, npm or Node.js headers, offline; compiling
 * stays as a fallback that works without Node's headers (node-api-headers);
 * TensorFlow's INFO lines stay off the terminal while its warnings reach it,
 * through the child process the CLI runs such commands in, which ends with
 * its parent. The wheel and npm tarballs come from build:addon's work folder,
 * where its compile left them.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, promises as fs, readFileSync, realpathSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { MANYLINUX_2_27, readVersionNeeds, versionsBeyond, type VersionNeed } from '../src/engine/elfVersions';
import { GOOGLE_PROTOBUF_VERSION, kernelsSourceFile, PINNED_TENSORFLOW, readActiveEngine, SHIPPED_ADDON_FILE, SHIPPED_ADDON_STAMP, shippedAddonFolder, type ShippedAddonStamp, TFJS_NODE_VERSION } from '../src/engine/engineLayout';
import { setupEngine, sha256Of } from '../src/engine/engineSetup';
import { pathWithOnly, REPO_ROOT, scratch } from './helpers';

const SKIP = process.platform === 'linux' && process.arch === 'x64' ? false : 'the native engine is Linux x86-64 only';
const ADDON = path.join(shippedAddonFolder(), SHIPPED_ADDON_FILE);
const DOWNLOADS = path.join(REPO_ROOT, 'build', 'addon-engine', 'downloads');
const WHEEL = path.join(DOWNLOADS, PINNED_TENSORFLOW.fileName);
const TFJS_NODE_TARBALL = path.join(DOWNLOADS, `tensorflow-tfjs-node-${TFJS_NODE_VERSION}.tgz`);
const PROTOBUF_TARBALL = path.join(DOWNLOADS, `google-protobuf-${GOOGLE_PROTOBUF_VERSION}.tgz`);
const CLI = path.join(REPO_ROOT, 'bin', 'cellfinder-retrain.js');

/** The engine the no-compiler set-up makes, which the log test then loads. */
const ROOT = mkdtempSync(path.join(tmpdir(), 'cfr-shipped-engine-'));
after(() => rmSync(ROOT, { recursive: true, force: true }));

function needBuildFiles(...files: string[]): void {
  for (const file of files) {
    if (!existsSync(file)) assert.fail(`${file} is missing: run npm run build:addon -- --force (it compiles the addon and keeps the wheel and npm tarballs it used in ${DOWNLOADS})`);
  }
}

/** The CLI in a child process, as a user runs it. */
function runCli(args: string[], env: NodeJS.ProcessEnv): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

/** binutils' view of the same section: `readelf -V` lists "File: <lib>" with its "Name: <version>" lines. */
function readelfNeeds(file: string): VersionNeed[] | undefined {
  const run = spawnSync('readelf', ['-V', '-W', file], { encoding: 'utf8' });
  if (run.status !== 0) return undefined;
  const section = run.stdout.split(/^Version needs section/m)[1]?.split(/^\S/m)[0] ?? '';
  const needs: VersionNeed[] = [];
  for (const line of section.split('\n')) {
    const library = /File: (\S+)/.exec(line)?.[1];
    const version = /Name: (\S+)/.exec(line)?.[1];
    if (library) needs.push({ file: library, versions: [] });
    else if (version) needs[needs.length - 1].versions.push(version);
  }
  return needs;
}

const sortedNeeds = (needs: VersionNeed[]) => needs.map(({ file, versions }) => `${file}: ${[...versions].sort().join(' ')}`).sort();

test('the shipped addon needs no glibc, libstdc++ or libgcc symbol version beyond manylinux_2_27, as TensorFlow\'s wheel', { skip: SKIP }, async (t) => {
  needBuildFiles(ADDON);
  const needs = readVersionNeeds(ADDON);
  t.diagnostic(`${ADDON} (${(await fs.stat(ADDON)).size} bytes) needs:\n${sortedNeeds(needs).join('\n')}`);
  assert.deepEqual(versionsBeyond(needs, MANYLINUX_2_27), []);
  // It links the C, maths (our kernels' sqrt) and C++ runtimes and TensorFlow (by soname), nothing else with versioned symbols.
  assert.deepEqual(needs.map((need) => need.file).sort(), ['libc.so.6', 'libm.so.6', 'libstdc++.so.6', 'libtensorflow_cc.so.2']);
  assert.ok(!needs.some((need) => need.versions.includes('GLIBCXX_3.4.29')), "GCC 11+'s std::__throw_bad_array_new_length stays inside the addon");
  const binutils = readelfNeeds(ADDON);
  if (binutils) assert.deepEqual(sortedNeeds(needs), sortedNeeds(binutils), 'readelf -V reads the same');
  else t.diagnostic('readelf is not installed: the ELF reader is not compared with binutils here');
  // The stamp set-up reads describes this very file.
  const stamp = JSON.parse(readFileSync(path.join(shippedAddonFolder(), SHIPPED_ADDON_STAMP), 'utf8')) as ShippedAddonStamp;
  assert.equal(stamp.sha256, await sha256Of(ADDON));
  assert.equal(stamp.kernelsSha256, await sha256Of(kernelsSourceFile()), 'compiled with this package\'s native/cellfinder_kernels.cc');
  assert.ok(readFileSync(ADDON).includes('CellfinderBatchNormTraining'), 'the shipped addon has our batch-norm kernels');
  assert.deepEqual(sortedNeeds(stamp.requires), sortedNeeds(needs));

  // The check does refuse what this machine's own libraries need: its libstdc++ was built for its newer glibc.
  const libstdcxx = readFileSync('/proc/self/maps', 'utf8').split('\n').map((line) => line.split(/\s+/)[5]).find((file) => file && /\/libstdc\+\+\.so\.6/.test(file));
  assert.ok(libstdcxx, 'Node.js has libstdc++ mapped');
  const beyond = versionsBeyond(readVersionNeeds(realpathSync(libstdcxx)), MANYLINUX_2_27);
  t.diagnostic(`${libstdcxx} needs, beyond manylinux_2_27: ${beyond.join(', ')}`);
  assert.ok(beyond.some((version) => /^GLIBC_2\.(2[89]|[3-9]\d)/.test(version)), `expected glibc 2.28+ symbols in ${beyond.join(', ')}`);
});

test('set-up with no compiler, make, Python, npm or Node.js headers uses the shipped addon (offline: wheel and npm tarballs given)', { skip: SKIP, timeout: 10 * 60_000 }, async (t) => {
  needBuildFiles(ADDON, WHEEL, TFJS_NODE_TARBALL, PROTOBUF_TARBALL);
  // Only what set-up then needs: node, and tar with gzip for the npm tarballs. /usr/bin has gcc, make and python3 beside node.
  const bin = pathWithOnly(t, ['node', 'tar', 'gzip']);
  const noHeaders = scratch(t);
  const env: NodeJS.ProcessEnv = { HOME: process.env.HOME, PATH: bin, CELLFINDER_RETRAIN_ENGINE_DIR: ROOT, npm_config_nodedir: noHeaders, CELLFINDER_RETRAIN_NODEDIR: noHeaders };
  for (const tool of ['gcc', 'g++', 'cc', 'c++', 'make', 'python3', 'npm', 'node-gyp']) assert.ok(!existsSync(path.join(bin, tool)));
  const started = performance.now();
  const run = await runCli(['engine', 'setup', '--wheel', WHEEL, '--tfjs-node-tarball', TFJS_NODE_TARBALL, '--google-protobuf-tarball', PROTOBUF_TARBALL], env);
  const seconds = (performance.now() - started) / 1000;
  assert.equal(run.status, 0, run.stderr);
  t.diagnostic(`engine setup and its engine check took ${seconds.toFixed(1)} s with PATH=${bin}`);
  assert.match(run.stderr, /using the shipped TensorFlow addon/);
  assert.doesNotMatch(run.stderr, /compiling|node-gyp|fetching/);
  // The engine check that set-up ends with passed, on this engine.
  assert.match(run.stdout, /one-batch fit vs the pure-JavaScript engine: .*: ok/);
  const engine = readActiveEngine(ROOT);
  assert.ok(engine.ok, engine.ok ? '' : engine.reason);
  assert.deepEqual(engine.manifest.addonBuild, { kind: 'shipped', from: ADDON });
  assert.equal(engine.manifest.tensorflowVersion, PINNED_TENSORFLOW.version);
  t.diagnostic(`set-up steps (s): ${JSON.stringify(engine.manifest.timings)}`);
});

test("TensorFlow's INFO lines stay off the CLI's stderr; its warnings reach it, and INFO too when asked for", { skip: SKIP, timeout: 5 * 60_000 }, async () => {
  assert.ok(readActiveEngine(ROOT).ok, 'the set-up test above made an engine');
  const env: NodeJS.ProcessEnv = { ...process.env, CELLFINDER_RETRAIN_ENGINE_DIR: ROOT };
  delete env.TF_CPP_MIN_LOG_LEVEL;
  delete env.CELLFINDER_RETRAIN_RELAYED;
  // A value TensorFlow does not understand makes it warn while it loads, the same way it prints the oneDNN INFO line.
  const check = await runCli(['engine', 'check'], { ...env, TF_ENABLE_ONEDNN_OPTS: 'sometimes' });
  assert.equal(check.status, 0, check.stderr);
  const lines = check.stderr.split('\n');
  assert.deepEqual(lines.filter((line) => /^I\d{4} |oneDNN custom operations are on|This TensorFlow binary is optimized|absl::InitializeLog/.test(line)), []);
  assert.ok(lines.some((line) => /^W\d{4} .*TF_ENABLE_ONEDNN_OPTS is not set to either/.test(line)), `TensorFlow's warning is shown:\n${check.stderr}`);

  const verbose = await runCli(['engine', 'check'], { ...env, TF_CPP_MIN_LOG_LEVEL: '0' });
  assert.equal(verbose.status, 0, verbose.stderr);
  assert.match(verbose.stderr, /^I\d{4} .*This TensorFlow binary is optimized/m);
});

/** The processes whose parent is `pid` (from /proc/<pid>/stat). */
async function childrenOf(pid: number): Promise<number[]> {
  const children: number[] = [];
  for (const entry of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = await fs.readFile(`/proc/${entry}/stat`, 'utf8').catch(() => '');
    // pid (comm) state ppid ...: comm may hold spaces, so read after its closing parenthesis.
    if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) children.push(Number(entry));
  }
  return children;
}

test('the relayed child that loads TensorFlow ends with its parent when that is killed with SIGKILL', { skip: SKIP, timeout: 60_000 }, async () => {
  const env: NodeJS.ProcessEnv = { ...process.env, CELLFINDER_RETRAIN_ENGINE_DIR: ROOT };
  delete env.CELLFINDER_RETRAIN_RELAYED;
  const parent = spawn(process.execPath, [CLI, 'engine', 'check'], { env, stdio: 'ignore' });
  let children: number[] = [];
  for (let i = 0; i < 100 && children.length === 0; i++) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    children = await childrenOf(parent.pid as number);
  }
  assert.equal(children.length, 1, 'engine check runs in one child process');
  parent.kill('SIGKILL');
  // Gone, or a zombie waiting for whoever adopted it.
  const alive = () => {
    try {
      return !/^\S+ \(.*\) Z/.test(readFileSync(`/proc/${children[0]}/stat`, 'utf8'));
    } catch {
      return false;
    }
  };
  for (let i = 0; i < 40 && alive(); i++) await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(alive(), false, `process ${children[0]} still runs 2 s after its parent was killed`);
});

test('compile fallback: without Node.js headers, node-gyp builds the addon against node-api-headers from npm, within manylinux_2_27 too', { skip: SKIP, timeout: 10 * 60_000 }, async (t) => {
  needBuildFiles(WHEEL, TFJS_NODE_TARBALL, PROTOBUF_TARBALL);
  const root = scratch(t, 'cfr-compiled-engine-');
  const noHeaders = scratch(t);
  const env: NodeJS.ProcessEnv = { ...process.env, npm_config_nodedir: noHeaders };
  delete env.CELLFINDER_RETRAIN_NODEDIR;
  const messages: string[] = [];
  const result = await setupEngine({ root, compile: true, wheel: WHEEL, tfjsNodeTarball: TFJS_NODE_TARBALL, googleProtobufTarball: PROTOBUF_TARBALL, env, onProgress: (progress) => messages.push(progress.message) });
  assert.equal(result.addonBuild?.kind, 'compiled');
  assert.ok(messages.some((message) => /no Node\.js headers here: fetching node-api-headers@/.test(message)), messages.join('\n'));
  const log = await fs.readFile(result.logFile as string, 'utf8');
  assert.match(log, /node-gyp\.js rebuild --nodedir=\S+build-support\/node /, 'node-gyp got the folder made from node-api-headers');
  const addon = path.join(result.engineDir, 'tfjs-node', 'lib', 'napi-v8', SHIPPED_ADDON_FILE);
  assert.deepEqual(versionsBeyond(readVersionNeeds(addon), MANYLINUX_2_27), []);
  assert.ok(readFileSync(addon).includes('CellfinderBatchNormTraining'), 'the compiled addon has our batch-norm kernels');
  t.diagnostic(`compiled in ${result.timings.build} s; verified TensorFlow ${result.tensorflowVersion}`);
});
