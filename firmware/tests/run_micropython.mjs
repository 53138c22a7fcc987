// Runs firmware/tests/mp_tests.py on the real MicroPython interpreter (the WebAssembly port
// from npm, pinned in firmware/package.json) under node.
//
// The firmware modules, the test scenarios and the shared vectors are copied into
// MicroPython's in-memory filesystem with the same layout as the repository
// (/fw/supervisor, /fw/tests, /fw/protocol), so the scenarios find vectors.json the way they
// do on CPython. Exit code 0 only if every scenario passed.
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const firmware = join(dirname(fileURLToPath(import.meta.url)), "..");
const out = [];
const mp = await loadMicroPython({
  heapsize: 16 * 1024 * 1024,
  stdout: (line) => { out.push(line); process.stdout.write(line + "\n"); },
  stderr: (line) => process.stderr.write(line + "\n"),
});

const copy = (sub, suffix) => {
  mp.FS.mkdir(`/fw/${sub}`);
  for (const name of readdirSync(join(firmware, sub))) {
    if (name.endsWith(suffix)) {
      mp.FS.writeFile(`/fw/${sub}/${name}`, readFileSync(join(firmware, sub, name)));
    }
  }
};
mp.FS.mkdir("/fw");
copy("supervisor", ".py");
copy("tests", ".py");
copy("protocol", ".json");

let code = 0;
try {
  mp.runPython(
    "import sys\n" +
    "sys.path.insert(0, '/fw/supervisor')\n" +
    "sys.path.insert(0, '/fw/tests')\n" +
    "print('MicroPython', sys.version, sys.implementation)\n" +
    "import mp_tests\n",
  );
} catch (err) {
  process.stderr.write(String(err) + "\n");
  code = 1;
}
if (!out.some((line) => /^MP-TESTS \d+ passed 0 failed$/.test(line))) code = 1;
process.exit(code);
