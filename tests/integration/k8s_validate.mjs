// Validates Kubernetes objects offline against the API schema of npm's kubernetes-models:
// the package's own validate() (types, required fields, formats), plus a check that every
// field exists in the schema, which validate() does not do (a misspelt "restartPolcy" would
// pass it). Usage: node k8s_validate.mjs NODE_MODULES OBJECTS.json; prints one line per
// problem and exits 1 when there is any.
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [modules, objectsFile] = process.argv.slice(2);
const objects = JSON.parse(fs.readFileSync(objectsFile, "utf8"));
const problems = [];

// TypeScript object types as they appear in the package's .d.ts files: members split at
// top-level ";", each `"name"?: T` or `[key: string]: T`; T an Array<...>, an inline object,
// an imported interface name, or something scalar.
function splitTop(text, sep) {
  const parts = [];
  let depth = 0, start = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "{" || c === "<" || c === "(") depth++;
    else if (c === "}" || c === ">" || c === ")") depth--;
    else if (c === sep && depth === 0) { parts.push(text.slice(start, i)); start = i + 1; }
  }
  parts.push(text.slice(start));
  return parts.map((p) => p.trim()).filter((p) => p);
}

function parseType(text) {
  text = text.trim();
  if (text.startsWith("Array<") && text.endsWith(">")) return { array: parseType(text.slice(6, -1)) };
  if (text.startsWith("{") && text.endsWith("}")) return parseObject(text.slice(1, -1));
  if (/^\w+$/.test(text)) return { ref: text };
  return {};  // string, number, a union of literals: validate() checks those
}

function parseObject(body) {
  const fields = {};
  let index = null;
  for (const member of splitTop(body, ";")) {
    const m = member.match(/^(?:"([^"]+)"|(\w+))\??:\s*([\s\S]+)$/);
    const ix = member.match(/^\[key: string\]:\s*([\s\S]+)$/);
    if (ix) index = parseType(ix[1]);
    else if (m) fields[m[1] ?? m[2]] = parseType(m[3]);
  }
  return { object: { fields, index } };
}

// The interface a .d.ts file exports, with where its imported names live.
const cache = new Map();
function readInterface(file) {
  if (cache.has(file)) return cache.get(file);
  let result = null;
  if (file && fs.existsSync(file)) {
    const text = fs.readFileSync(file, "utf8").replace(/\/\*[\s\S]*?\*\//g, "");
    const imports = {};
    for (const m of text.matchAll(/import \{ ([^}]+) \} from "([^"]+)";/g)) {
      for (const name of m[1].split(",").map((s) => s.trim())) imports[name] = resolve(file, m[2]);
    }
    const head = text.match(/export interface \w+( extends TypeMeta)? \{/);
    if (head) {
      let depth = 0, i = head.index + head[0].length - 1;
      const open = i;
      for (; i < text.length; i++) {
        if (text[i] === "{") depth++;
        else if (text[i] === "}" && --depth === 0) break;
      }
      const type = parseObject(text.slice(open + 1, i));
      if (head[1]) type.object.fields.apiVersion = type.object.fields.kind = {};
      result = { type, imports };
    }
  }
  cache.set(file, result);
  return result;
}

function resolve(from, spec) {
  if (spec.startsWith(".")) return path.resolve(path.dirname(from), spec.replace(/\.js$/, ".d.ts"));
  if (spec.startsWith("@kubernetes-models/apimachinery/")) return path.join(modules, spec + ".d.ts");
  return null;
}

function check(value, type, imports, where) {
  if (value === null || typeof value !== "object") return;
  if (type.array && Array.isArray(value)) {
    value.forEach((v, i) => check(v, type.array, imports, `${where}[${i}]`));
  } else if (type.ref && imports[type.ref]) {
    const iface = readInterface(imports[type.ref]);
    if (iface) check(value, iface.type, iface.imports, where);
  } else if (type.object && !Array.isArray(value)) {
    for (const [key, v] of Object.entries(value)) {
      const t = type.object.fields[key] ?? type.object.index;
      if (!t) problems.push(`${where}.${key}: no such field`);
      else check(v, t, imports, `${where}.${key}`);
    }
  }
}

for (const { source, object } of objects) {
  const where = `${source}: ${object.kind}/${object.metadata?.name}`;
  const dir = path.join(modules, "kubernetes-models", object.apiVersion);
  let model;
  try {
    model = (await import(pathToFileURL(path.join(dir, "index.js")).href))[object.kind];
  } catch (e) {
    problems.push(`${where}: unknown apiVersion ${object.apiVersion}`);
    continue;
  }
  if (!model) {
    problems.push(`${where}: unknown kind ${object.kind} in ${object.apiVersion}`);
    continue;
  }
  try {
    new model(object).validate();
  } catch (e) {
    problems.push(`${where}: ${e.message}`);
  }
  const iface = readInterface(path.join(dir, `${object.kind}.d.ts`));
  if (iface) check(object, iface.type, iface.imports, where);
  else problems.push(`${where}: no schema found for ${object.kind}`);
}
for (const p of problems) console.log(p);
process.exit(problems.length ? 1 : 0);
