#!/usr/bin/env node
// Checks docs/asyncapi.yaml, and JSON messages against its payload schemas.
//
//   node docs/asyncapi/validate.mjs --doc                        the document is valid AsyncAPI 3
//                                                               (and its own examples validate)
//   node docs/asyncapi/validate.mjs --examples docs/protocol.md  every JSON example of the
//                                                               ```json blocks validates
//   ... | node docs/asyncapi/validate.mjs --stdin                 newline-separated server
//                                                               messages validate, each against
//                                                               its schema
//   node docs/asyncapi/validate.mjs --serve                     prints `ready`, then answers
//                                                               each server message line on
//                                                               stdin with one line: `ok <kind>`
//                                                               or `INVALID <why>`
//                                                               (the test suite's client checks
//                                                               what it receives through it)
//
// `--spec PATH` names another document (default: docs/asyncapi.yaml next to this directory).
// A message is matched to the document's messages by its `op` (requests, replies, notices) or,
// for data messages, by its `ch` against each payload's channel pattern; it is valid when one
// of those candidates accepts it. The last line of output is `SUMMARY {json}` (messages
// checked, per message kind, per channel shape) for programs. Exit status: 0 valid, 1 invalid,
// 2 a usage error or an unusable document.
//
// Needs the root package.json's devDependencies (`npm ci` at the repository root).

import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

import Ajv from 'ajv';
import yaml from 'js-yaml';

const here = dirname(fileURLToPath(import.meta.url));
const SCHEMA_ROOT = 'https://tickfan.invalid/asyncapi';

function usage(msg) {
  if (msg) console.error(`validate.mjs: ${msg}`);
  console.error('usage: validate.mjs [--spec PATH] (--doc | --examples FILE.md | --stdin | --serve)');
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { spec: join(here, '..', 'asyncapi.yaml'), mode: null, file: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--spec') opts.spec = argv[++i] ?? usage('--spec needs a path');
    else if (a === '--doc' || a === '--stdin' || a === '--serve') opts.mode ??= a.slice(2);
    else if (a === '--examples') {
      opts.mode ??= 'examples';
      opts.file = argv[++i] ?? usage('--examples needs a Markdown file');
    } else usage(`unknown argument ${a}`);
  }
  if (!opts.mode) usage('say what to check');
  return opts;
}

// ---------------------------------------------------------------------------------------------
// The document's schemas, compiled with Ajv, and which messages go which way.

/** Deep copy of `v` with every `#/components/schemas/X` reference made absolute. */
function absoluteRefs(v) {
  if (Array.isArray(v)) return v.map(absoluteRefs);
  if (v && typeof v === 'object') {
    const out = {};
    for (const [k, x] of Object.entries(v)) {
      out[k] =
        k === '$ref' && typeof x === 'string' && x.startsWith('#/components/schemas/')
          ? `${SCHEMA_ROOT}#/definitions/${x.slice('#/components/schemas/'.length)}`
          : absoluteRefs(x);
    }
    return out;
  }
  return v;
}

/** The component a `{$ref: '#/components/<what>/<name>'}` names (or `v` itself). */
function deref(doc, v) {
  while (v && typeof v.$ref === 'string') {
    const path = v.$ref.replace(/^#\//, '').split('/').map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
    v = path.reduce((o, k) => (o == null ? undefined : o[k]), doc);
    if (v === undefined) throw new Error(`unresolved reference`);
  }
  return v;
}

/** Ajv's errors, one clause each, naming the offending field and the allowed values. */
function errorsText(errors) {
  return (errors ?? [])
    .map((e) => {
      const p = e.params ?? {};
      let extra = '';
      if (p.additionalProperty !== undefined) extra = `: ${JSON.stringify(p.additionalProperty)}`;
      else if (p.allowedValues) extra = ` (${p.allowedValues.join(', ')})`;
      else if (p.allowedValue !== undefined) extra = ` (${JSON.stringify(p.allowedValue)})`;
      return `${e.instancePath || '/'} ${e.message}${extra}`;
    })
    .join('; ');
}

/** The last segment of a `$ref`: the key a channel or component gives a message. */
const refName = (r) => r.$ref.split('/').pop();

class Spec {
  constructor(path) {
    this.path = path;
    this.text = readFileSync(path, 'utf8');
    this.doc = yaml.load(this.text);
    const schemas = this.doc?.components?.schemas ?? {};
    // strict: unknown keywords and type mistakes in the schemas are errors, not silently ignored.
    this.ajv = new Ajv({ allErrors: true, strict: true, allowUnionTypes: true });
    this.ajv.addSchema({ $id: SCHEMA_ROOT, definitions: absoluteRefs(schemas) });

    // Every message: its payload validator and what selects it (op, or ch's pattern).
    this.messages = new Map();
    for (const [name, msg] of Object.entries(this.doc?.components?.messages ?? {})) {
      const payload = msg.payload ?? {};
      const schema = deref(this.doc, payload);
      const props = schema.properties ?? {};
      const op = props.op ? deref(this.doc, props.op).const : undefined;
      const ch = props.ch ? deref(this.doc, props.ch) : undefined;
      const validate = this.ajv.compile(absoluteRefs(payload));
      this.messages.set(name, {
        name,
        op,
        chConst: ch?.const,
        chPattern: ch?.pattern ? new RegExp(ch.pattern) : undefined,
        validate,
      });
    }

    // Direction, from the operations: what the client sends, what it receives (replies too).
    this.clientSends = new Set();
    this.serverSends = new Set();
    for (const op of Object.values(this.doc?.operations ?? {})) {
      const into = op.action === 'send' ? this.clientSends : this.serverSends;
      for (const m of op.messages ?? []) into.add(refName(m));
      for (const m of op.reply?.messages ?? []) this.serverSends.add(refName(m));
    }
  }

  /** The messages that could be `v`, among those of `allowed` (a Set of names, or all). */
  candidates(v, allowed) {
    const out = [];
    for (const m of this.messages.values()) {
      if (allowed && !allowed.has(m.name)) continue;
      if (typeof v.op === 'string') {
        if (m.op === v.op) out.push(m);
      } else if (typeof v.ch === 'string' && m.op === undefined) {
        if (m.chConst === v.ch || m.chPattern?.test(v.ch)) out.push(m);
      }
    }
    return out;
  }

  /** `{ok, kind}` or `{ok: false, why}` for a parsed message. */
  check(v, allowed) {
    if (v === null || typeof v !== 'object' || Array.isArray(v)) {
      return { ok: false, why: 'not a JSON object' };
    }
    const cands = this.candidates(v, allowed);
    if (cands.length === 0) {
      const what =
        typeof v.op === 'string' ? `op ${JSON.stringify(v.op)}` : typeof v.ch === 'string' ? `ch ${JSON.stringify(v.ch)}` : 'no op and no ch';
      return { ok: false, why: `no message of the document matches ${what}` };
    }
    const why = [];
    for (const m of cands) {
      if (m.validate(v)) return { ok: true, kind: m.name };
      why.push(`  as ${m.name}: ${errorsText(m.validate.errors)}`);
    }
    return { ok: false, why: why.join('\n') };
  }
}

/** `book.<SYM>@5`, `candles.<SYM>.1m`, `op:gap`: what kind of channel or message `v` is. */
function shape(v) {
  if (typeof v.op === 'string') return `op:${v.op}`;
  if (typeof v.ch !== 'string') return '?';
  return v.ch.replace(/^([a-z]+)\.([A-Z0-9-]+)(?=$|[.@])/, '$1.<SYM>');
}

class Tally {
  constructor() {
    this.messages = 0;
    this.kinds = {};
    this.shapes = {};
  }
  add(v, kind) {
    this.messages++;
    this.kinds[kind] = (this.kinds[kind] ?? 0) + 1;
    const s = shape(v);
    this.shapes[s] = (this.shapes[s] ?? 0) + 1;
  }
  print(extra = {}) {
    const kinds = Object.entries(this.kinds).sort(([a], [b]) => a.localeCompare(b));
    console.log(`${this.messages} messages valid, ${kinds.length} kinds:`);
    for (const [k, n] of kinds) console.log(`  ${k.padEnd(18)} ${n}`);
    const shapes = Object.keys(this.shapes).sort();
    console.log(`channels and ops: ${shapes.join(' ')}`);
    console.log(`SUMMARY ${JSON.stringify({ messages: this.messages, kinds: this.kinds, shapes: this.shapes, ...extra })}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Modes.

async function checkDoc(spec) {
  // Loaded here only: it takes a while, and the other modes do not need it.
  const { Parser } = await import('@asyncapi/parser');
  const parser = new Parser();
  const { document, diagnostics } = await parser.parse(spec.text, { source: resolve(spec.path) });
  const severities = ['error', 'warning', 'info', 'hint'];
  let errors = 0;
  let warnings = 0;
  for (const d of diagnostics) {
    const sev = severities[d.severity] ?? String(d.severity);
    if (d.severity === 0) errors++;
    if (d.severity === 1) warnings++;
    if (d.severity <= 1) {
      const line = d.range?.start?.line;
      console.log(`${sev}: ${d.code}: ${d.message} at ${d.path.join('.')}${line === undefined ? '' : ` (line ${line + 1})`}`);
    }
  }
  if (!document || errors > 0) {
    console.log(`${spec.path}: not a valid AsyncAPI document (${errors} errors)`);
    return false;
  }
  const version = document.version();
  if (!version.startsWith('3.')) {
    console.log(`${spec.path}: AsyncAPI ${version}, expected 3.x`);
    return false;
  }
  let ok = warnings === 0;

  // Every channel's messages are the components of the same name (the validator relies on it).
  for (const [cname, ch] of Object.entries(spec.doc.channels ?? {})) {
    for (const [key, m] of Object.entries(ch.messages ?? {})) {
      if (!m.$ref || refName(m) !== key) {
        console.log(`channel ${cname}: message ${key} must be {$ref: '#/components/messages/${key}'}`);
        ok = false;
      }
    }
  }
  // No message is both sent and received under one `op` with indistinguishable payloads, and
  // every component message is used by an operation.
  for (const name of spec.messages.keys()) {
    if (!spec.clientSends.has(name) && !spec.serverSends.has(name)) {
      console.log(`message ${name} is in no operation`);
      ok = false;
    }
  }
  // The document's own examples validate against their payloads.
  let examples = 0;
  for (const [name, msg] of Object.entries(spec.doc.components?.messages ?? {})) {
    for (const [i, ex] of (msg.examples ?? []).entries()) {
      examples++;
      const m = spec.messages.get(name);
      if (!m.validate(ex.payload)) {
        console.log(`message ${name}, example ${i + 1}: ${errorsText(m.validate.errors)}`);
        ok = false;
      }
    }
  }
  const sends = [...spec.clientSends].sort().join(', ');
  const receives = [...spec.serverSends].sort().join(', ');
  console.log(`AsyncAPI ${version}: ${document.channels().length} channels, ${document.operations().length} operations, ${spec.messages.size} messages, ${Object.keys(spec.doc.components?.schemas ?? {}).length} schemas, ${examples} examples valid`);
  console.log(`client sends: ${sends}`);
  console.log(`server sends: ${receives}`);
  console.log(ok ? `${spec.path}: valid` : `${spec.path}: INVALID (${warnings} warnings)`);
  return ok;
}

/** Every JSON object of the ```json blocks of a Markdown file, with its line. */
function markdownExamples(text) {
  const out = [];
  let skipped = 0;
  let inJson = false;
  let buf = null;
  const lines = text.split('\n');
  lines.forEach((line, i) => {
    const fence = line.trimStart().startsWith('```');
    if (fence) {
      if (buf) out.push({ line: buf.line, text: buf.text, error: 'unterminated JSON object' });
      buf = null;
      inJson = !inJson && line.trim() === '```json';
      return;
    }
    if (!inJson) return;
    if (!buf) {
      if (!line.trimStart().startsWith('{')) return;
      buf = { line: i + 1, text: '' };
    }
    buf.text += (buf.text ? '\n' : '') + line;
    if (buf.text.includes('…')) {
      // An elided example (`"ts":…`) cannot be checked; it is counted and left out.
      if (balanced(buf.text)) {
        skipped++;
        buf = null;
      }
      return;
    }
    try {
      out.push({ line: buf.line, text: buf.text, value: JSON.parse(buf.text) });
      buf = null;
    } catch {
      // An object spread over several lines: read on.
    }
  });
  return { examples: out, skipped };
}

/** Whether the braces of `s` (outside strings) are closed. */
function balanced(s) {
  let depth = 0;
  let inStr = false;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (inStr) {
      if (c === '\\') i++;
      else if (c === '"') inStr = false;
    } else if (c === '"') inStr = true;
    else if (c === '{' || c === '[') depth++;
    else if (c === '}' || c === ']') depth--;
  }
  return depth <= 0;
}

function checkExamples(spec, file) {
  const { examples, skipped } = markdownExamples(readFileSync(file, 'utf8'));
  const tally = new Tally();
  let failures = 0;
  for (const ex of examples) {
    const r = ex.error ? { ok: false, why: ex.error } : spec.check(ex.value);
    if (r.ok) tally.add(ex.value, r.kind);
    else {
      failures++;
      console.log(`${file}:${ex.line}: INVALID ${ex.text.replace(/\n\s*/g, ' ')}\n${r.why}`);
    }
  }
  if (examples.length === 0) {
    console.log(`${file}: no JSON examples found`);
    failures++;
  }
  tally.print({ file, skipped_elided: skipped, invalid: failures });
  console.log(failures === 0 ? `${file}: ${examples.length} examples valid (${skipped} elided ones skipped)` : `${file}: ${failures} of ${examples.length} examples INVALID`);
  return failures === 0;
}

async function checkStdin(spec) {
  const tally = new Tally();
  const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
  let n = 0;
  for await (const line of rl) {
    n++;
    if (line.trim() === '') continue;
    let value;
    try {
      value = JSON.parse(line);
    } catch (e) {
      console.log(`stdin:${n}: INVALID not JSON (${e.message}): ${line}`);
      tally.print({ invalid: 1 });
      return false;
    }
    const r = spec.check(value, spec.serverSends);
    if (!r.ok) {
      console.log(`stdin:${n}: INVALID ${line}\n${r.why}`);
      tally.print({ invalid: 1 });
      return false;
    }
    tally.add(value, r.kind);
  }
  tally.print({ invalid: 0 });
  return true;
}

/** One answer line per message line, for as long as stdin is open. */
async function serve(spec) {
  process.stdout.write('ready\n'); // the schemas are compiled: answers come at once from here
  const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of rl) {
    let r;
    try {
      r = spec.check(JSON.parse(line), spec.serverSends);
    } catch (e) {
      r = { ok: false, why: `not JSON (${e.message})` };
    }
    process.stdout.write(r.ok ? `ok ${r.kind}\n` : `INVALID ${r.why.replace(/\s*\n\s*/g, ' | ')}\n`);
  }
  return true;
}

// ---------------------------------------------------------------------------------------------

const opts = parseArgs(process.argv.slice(2));
let spec;
try {
  spec = new Spec(opts.spec);
} catch (e) {
  console.error(`${opts.spec}: ${e.message}`);
  process.exit(2);
}
let ok;
if (opts.mode === 'doc') ok = await checkDoc(spec);
else if (opts.mode === 'examples') ok = checkExamples(spec, opts.file);
else if (opts.mode === 'serve') ok = await serve(spec);
else ok = await checkStdin(spec);
process.exit(ok ? 0 : 1);
