'use strict';
// What serverless.yml derives from config/<stage>.yml beyond plain variables: the functions and
// each lane's resources. Serverless variables cannot loop over lanes, so sluice's own Python
// (sluice_tools/infra_expand.py, from Settings.resolved_lanes() and the function table) writes
// them as JSON; see docs/adr/0006-lane-expansion.md.
const { execFileSync } = require('child_process');
const fs = require('fs');
const path = require('path');

// The tooling's Python: the Makefile passes the project's venv; a bare `serverless` run finds it.
const toolsPython = (root) => {
  if (process.env.SLUICE_TOOLS_PYTHON) return process.env.SLUICE_TOOLS_PYTHON;
  const venv = path.join(root, '.venv', 'bin', 'python');
  return fs.existsSync(venv) ? venv : 'python3';
};

const expanded = {};
const expand = async (part, { resolveVariable }) => {
  const stage = await resolveVariable('sls:stage');
  const root = path.resolve(__dirname, '..');
  const key = `${stage}/${part}`;
  if (!(key in expanded)) {
    try {
      const out = execFileSync(toolsPython(root),
        ['-m', 'sluice_tools.infra_expand', '--stage', stage, '--part', part, '--root', root],
        { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
      expanded[key] = JSON.parse(out);
    } catch (err) {
      // One line saying why (the module prints "sluice: ..."), not a JavaScript stack.
      const reason = (err.stderr || err.message || String(err)).toString().trim();
      throw new Error(`infra/derived.js: expanding ${part} for stage ${stage} failed: ${reason}`);
    }
  }
  return expanded[key];
};

module.exports.functions = (context) => expand('functions', context);
module.exports.laneResources = (context) => expand('resources', context);
