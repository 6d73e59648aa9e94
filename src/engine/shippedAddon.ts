/**
 * `cellfinder-retrain engine build-addon` (`npm run build:addon`, run by
 * `npm run package`, `npm pack` and the tests): compiles tfjs-node's N-API
 * addon once, in our build, so that users' set-up needs no compiler, make,
 * Python build tools or Node.js headers.
 *
 * It is the set-up's own compile path (setupEngine with `compile`), in a
 * private engine folder (build/addon-engine, whose downloaded wheel is kept
 * for the next build), followed by a check that the addon needs no glibc,
 * libstdc++ or libgcc symbol version beyond manylinux_2_27, the platform of
 * TensorFlow's wheel: otherwise it would not load everywhere TensorFlow
 * does. The result, prebuilds/linux-x64/tfjs_binding.node (about 90 kB) and
 * its stamp tfjs_binding.json, goes into the VSIX and the npm package.
 * Nothing is rebuilt while the stamp still fits and the file is intact.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { MANYLINUX_2_27, readVersionNeeds, versionsBeyond } from './elfVersions';
import { kernelsSourceFile, NAPI_BUILD_VERSION, packageRoot, readEngine, SHIPPED_ADDON_FILE, SHIPPED_ADDON_STAMP, shippedAddonFolder, type ShippedAddonStamp, TFJS_NODE_VERSION } from './engineLayout';
import { setupEngine, sha256Of } from './engineSetup';

export interface BuildAddonOptions {
  /** A tensorflow-cpu wheel to compile against (default: the pinned one, downloaded once into the work folder). */
  wheel?: string;
  /** Where the compiling set-up runs (default: build/addon-engine in the package). */
  workDir?: string;
  /** Compile even when the shipped addon is up to date. */
  force?: boolean;
  onProgress?: (message: string) => void;
  env?: NodeJS.ProcessEnv;
}

export interface BuiltAddon {
  file: string;
  stamp: ShippedAddonStamp;
  /** The addon was up to date: nothing compiled. */
  alreadyBuilt: boolean;
}

export async function buildShippedAddon(options: BuildAddonOptions = {}): Promise<BuiltAddon> {
  const folder = shippedAddonFolder();
  const file = path.join(folder, SHIPPED_ADDON_FILE);
  const stampFile = path.join(folder, SHIPPED_ADDON_STAMP);
  if (!options.force) {
    const stamp = await fs.readFile(stampFile, 'utf8').then((text) => JSON.parse(text) as ShippedAddonStamp, () => undefined);
    const intact = stamp && (await sha256Of(file).catch(() => '')) === stamp.sha256;
    const sameKernels = stamp?.kernelsSha256 === (await sha256Of(kernelsSourceFile()));
    if (stamp && intact && sameKernels && stamp.tfjsNodeVersion === TFJS_NODE_VERSION && stamp.napiBuildVersion === NAPI_BUILD_VERSION) return { file, stamp, alreadyBuilt: true };
  }
  const workDir = path.resolve(options.workDir ?? path.join(packageRoot(), 'build', 'addon-engine'));
  // Always against the pinned wheel's headers unless one is given: never a Python TensorFlow that happens to be installed.
  const result = await setupEngine({ compile: true, force: true, keepDownloads: true, root: workDir, source: options.wheel ? 'wheel' : 'download', wheel: options.wheel, env: options.env, onProgress: (progress) => options.onProgress?.(progress.message) });
  const engine = readEngine(result.engineDir);
  if (!engine.ok) throw new Error(`the compiling set-up in ${workDir} left no complete engine: ${engine.reason}`);
  const compiled = path.join(result.engineDir, engine.manifest.addon);
  const requires = readVersionNeeds(compiled);
  const beyond = versionsBeyond(requires, MANYLINUX_2_27);
  if (beyond.length > 0) {
    throw new Error(
      `the addon compiled here (${compiled}) requires ${beyond.join(', ')}, newer than manylinux_2_27 (TensorFlow's wheel) allows, so it would not load everywhere TensorFlow does. Build it where the CI does (Debian 12: glibc 2.36, GCC 12), or keep the new symbol inside the addon as LIBSTDCXX_COMPAT in src/engine/engineSetup.ts does for GCC 11's`,
    );
  }
  const header = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header;
  const stamp: ShippedAddonStamp = {
    tfjsNodeVersion: TFJS_NODE_VERSION,
    napiBuildVersion: NAPI_BUILD_VERSION,
    tensorflowVersion: result.tensorflowVersion,
    sha256: await sha256Of(compiled),
    kernelsSha256: await sha256Of(kernelsSourceFile()),
    compiler: result.addonBuild?.from ?? 'unknown',
    glibc: header?.glibcVersionRuntime ?? 'unknown',
    requires,
    builtAt: new Date().toISOString(),
  };
  await fs.mkdir(folder, { recursive: true });
  await fs.copyFile(compiled, `${file}.partial`);
  await fs.rename(`${file}.partial`, file);
  await fs.writeFile(stampFile, `${JSON.stringify(stamp, null, 2)}\n`);
  // The compiled engine (640 MB of TensorFlow) is not needed; the wheel stays in the work folder for the next build.
  await fs.rm(result.engineDir, { recursive: true, force: true });
  return { file, stamp, alreadyBuilt: false };
}
