#!/usr/bin/env node
// Compiles contracts/sol/*.sol with the pinned solcjs and writes one {"abi", "bytecode",
// "deployedBytecode"} JSON per deployable contract to contracts/artifacts/NAME.json (and the test
// contracts of sol/test/ to artifacts/test/NAME.json), the shape
// alloy's `sol!` reads. Same sources, same bytes: inputs are read in sorted order, the compiler and
// its settings are pinned, and the output is printed with a fixed indentation.
//
//   node build.js          write the artifacts
//   node build.js --check  exit 1 when the committed artifacts differ from a fresh compile (CI)
'use strict';

const fs = require('fs');
const path = require('path');
const solc = require('solc');

const PINNED_VERSION = require('./package.json').devDependencies.solc;
const ROOT = __dirname;
const SOURCE_DIR = path.join(ROOT, 'sol');
// Source subfolders and the artifact subfolders their contracts go to.
const SUBDIRS = ['', 'test'];
const ARTIFACT_DIR = path.join(ROOT, 'artifacts');

function fail(message) {
  console.error(`contracts/build.js: ${message}`);
  process.exit(1);
}

function compilerInput() {
  const sources = {};
  for (const sub of SUBDIRS) {
    const dir = path.join(SOURCE_DIR, sub);
    for (const name of fs.readdirSync(dir).filter((f) => f.endsWith('.sol')).sort()) {
      sources[path.posix.join('sol', sub, name)] = { content: fs.readFileSync(path.join(dir, name), 'utf8') };
    }
  }
  return {
    language: 'Solidity',
    sources,
    settings: {
      // cancun: transient storage for the reentrancy guard; anvil and mainnet both support it.
      evmVersion: 'cancun',
      optimizer: { enabled: true, runs: 10000 },
      outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] } },
    },
  };
}

function compile() {
  // solcjs reports its version as "0.8.28+commit.7893614a.Emscripten.clang".
  const version = solc.version();
  if (!version.startsWith(`${PINNED_VERSION}+`)) {
    fail(`solc ${version} is installed but package.json pins ${PINNED_VERSION}; run npm ci in contracts/`);
  }
  const output = JSON.parse(solc.compile(JSON.stringify(compilerInput())));
  const diagnostics = output.errors || [];
  for (const d of diagnostics) console.error(d.formattedMessage.trimEnd());
  if (diagnostics.some((d) => d.severity === 'error')) fail('compilation failed');

  const artifacts = {};
  for (const file of Object.keys(output.contracts).sort()) {
    for (const name of Object.keys(output.contracts[file]).sort()) {
      const contract = output.contracts[file][name];
      // Interfaces and abstract contracts have no bytecode: nothing to deploy, no artifact.
      if (!contract.evm.bytecode.object) continue;
      const out = file.startsWith('sol/test/') ? `test/${name}.json` : `${name}.json`;
      if (artifacts[out]) fail(`two contracts are named ${name}`);
      const artifact = {
        abi: contract.abi,
        bytecode: `0x${contract.evm.bytecode.object}`,
        deployedBytecode: `0x${contract.evm.deployedBytecode.object}`,
      };
      artifacts[out] = `${JSON.stringify(artifact, null, 2)}\n`;
    }
  }
  return artifacts;
}

function existingArtifacts() {
  const files = {};
  for (const sub of SUBDIRS) {
    const dir = path.join(ARTIFACT_DIR, sub);
    if (!fs.existsSync(dir)) continue;
    for (const name of fs.readdirSync(dir).filter((f) => f.endsWith('.json')).sort()) {
      files[path.posix.join(sub, name)] = fs.readFileSync(path.join(dir, name), 'utf8');
    }
  }
  return files;
}

function main() {
  const check = process.argv.includes('--check');
  const fresh = compile();
  const committed = existingArtifacts();
  const names = [...new Set([...Object.keys(fresh), ...Object.keys(committed)])].sort();
  const stale = names.filter((n) => fresh[n] !== committed[n]);

  if (check) {
    if (stale.length === 0) {
      console.log(`contracts/build.js: ${names.length} artifacts match solc ${PINNED_VERSION}`);
      return;
    }
    for (const n of stale) {
      const why = !(n in committed) ? 'missing' : !(n in fresh) ? 'no longer compiled' : 'differs';
      console.error(`contracts/artifacts/${n}: ${why}`);
    }
    fail('artifacts are out of date with sol/; run `npm run build` in contracts/ and commit them');
  }

  for (const sub of SUBDIRS) fs.mkdirSync(path.join(ARTIFACT_DIR, sub), { recursive: true });
  for (const n of stale) {
    if (n in fresh) fs.writeFileSync(path.join(ARTIFACT_DIR, n), fresh[n]);
    else fs.unlinkSync(path.join(ARTIFACT_DIR, n));
  }
  console.log(`contracts/build.js: wrote ${stale.length} of ${Object.keys(fresh).length} artifacts`);
}

main();
