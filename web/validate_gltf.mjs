// Validate glTF 2.0 files with the Khronos glTF validator (npm gltf-validator, pinned in package.json).
// Usage: node web/validate_gltf.mjs FILE.glb [...]   -> one JSON report per file on stdout, one per line:
//   {"file", "errors", "warnings", "infos", "hints", "messages": [first 50 issues], "info": {...}}
// Exit status: 0 when no file has errors, 1 when any has, 2 on bad usage or an unreadable file.
import fs from 'node:fs';
import { validateBytes } from 'gltf-validator';

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error('usage: node web/validate_gltf.mjs FILE.glb [...]');
  process.exit(2);
}
let failed = false;
for (const file of files) {
  let data;
  try {
    data = new Uint8Array(fs.readFileSync(file));
  } catch (e) {
    console.error(`validate_gltf: cannot read ${file}: ${e.message}`);
    process.exit(2);
  }
  const report = await validateBytes(data, { maxIssues: 0, format: file.endsWith('.gltf') ? 'gltf' : 'glb' });
  const i = report.issues;
  failed ||= i.numErrors > 0;
  console.log(JSON.stringify({ file, errors: i.numErrors, warnings: i.numWarnings, infos: i.numInfos,
                               hints: i.numHints, messages: i.messages.slice(0, 50), info: report.info }));
}
process.exit(failed ? 1 : 0);
