// Prints compiler/linker flags for libtorch, for binding.gyp.
// LIBTORCH=/path/to/libtorch selects another build (e.g. a CUDA one unpacked from pytorch.org);
// without it, Debian's libtorch-dev in /usr is used.
'use strict';
const fs = require('fs');
const path = require('path');

const root = process.env.LIBTORCH;
const what = process.argv[2];

/** The C++ standard the headers ask for: libtorch 2.10+ requires C++20, 1.13 is built for C++17. */
function cxxStandard(atenHeader) {
  const text = fs.readFileSync(atenHeader, 'utf8');
  return /C\+\+20 or later/.test(text) ? '-std=c++20' : '-std=c++17';
}

function fail(msg) {
  process.stderr.write(`softpress native build: ${msg}\n`);
  process.exit(1);
}

if (root) {
  const inc = path.join(root, 'include');
  const lib = path.join(root, 'lib');
  if (!fs.existsSync(path.join(inc, 'ATen', 'ATen.h'))) fail(`LIBTORCH=${root} has no include/ATen/ATen.h`);
  if (what === 'include') console.log([inc, path.join(inc, 'torch', 'csrc', 'api', 'include')].join(' '));
  else if (what === 'std') console.log(cxxStandard(path.join(inc, 'ATen', 'ATen.h')));
  // libtorch_cpu and c10 hold every CPU kernel; a CUDA build's libtorch.so would pull in
  // libtorch_cuda.so and its CUDA libraries, which softpress never calls, so it is not linked.
  else if (what === 'libs') console.log(`-L${lib} -Wl,-rpath,${lib} -ltorch_cpu -lc10`);
  else fail(`unknown query ${what}`);
} else {
  if (!fs.existsSync('/usr/include/ATen/ATen.h')) {
    fail('libtorch headers not found (/usr/include/ATen/ATen.h). Install libtorch-dev (scripts/setup.sh does) or set LIBTORCH.');
  }
  if (what === 'include') console.log('/usr/include/torch/csrc/api/include');
  else if (what === 'std') console.log(cxxStandard('/usr/include/ATen/ATen.h'));
  else if (what === 'libs') console.log('-ltorch -ltorch_cpu -lc10');
  else fail(`unknown query ${what}`);
}
