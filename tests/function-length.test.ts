/**
 * The team rule: no function in `lib/` or `cli/` is longer than 80 lines
 * (`.ts` files, `lib/generated/` excepted). A function that needs scrolling
 * usually does two jobs whose shared state a reader has to hold in mind at
 * once; `supervise()` in `cli/serve.ts` grew to about 300 lines that way (see
 * ../shared/STYLE.md). This test fails, naming file:line, function and length,
 * as soon as one such function exists, so the rule holds without a reviewer
 * counting lines.
 *
 * Counted: every function-like node (function declarations and expressions,
 * arrow functions, class methods and constructors, getters and setters, object
 * methods). A function's length is its last line minus its first line plus
 * one, comments and blank lines included; a nested function is counted on its
 * own and also inside the lines of the function that holds it.
 *
 * The parser is `@babel/parser` with its `typescript` plugin, a devDependency
 * only: TypeScript 7 (the native port) has no JavaScript compiler API, and
 * Babel's parser is pure JavaScript, widely used and well kept, needs no
 * native binary, and gives each node its start and end line. It is pinned to
 * 7.x because 8.x requires Node 22, and pgbg supports Node 20.
 *
 * It needs no database.
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, sep } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { parse } from "@babel/parser";

/** The longest a function may be, in lines. */
const MAX_LINES = 80;

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

/** A function found in a source file: where it starts, what it is called, how many lines it spans. */
interface FunctionLength {
  name: string;
  line: number;
  lines: number;
}

/** The part of a Babel AST node this test reads; every other field is walked generically. */
interface AstNode {
  type: string;
  loc?: { start: { line: number }; end: { line: number } } | null;
  [field: string]: unknown;
}

const FUNCTION_TYPES = new Set([
  "FunctionDeclaration",
  "FunctionExpression",
  "ArrowFunctionExpression",
  "ObjectMethod",
  "ClassMethod",
  "ClassPrivateMethod",
]);

/** Fields that hold positions or comments, not child nodes. */
const NOT_CHILDREN = new Set(["loc", "start", "end", "range", "extra", "leadingComments", "trailingComments", "innerComments"]);

const isNode = (value: unknown): value is AstNode =>
  typeof value === "object" && value !== null && typeof (value as { type?: unknown }).type === "string";

/** `a.b.c`, `this.x`, `f` for an expression that names something; `…` for anything else. */
function expressionName(node: unknown): string {
  if (!isNode(node)) return "…";
  if (node.type === "Identifier") return node.name as string;
  if (node.type === "ThisExpression") return "this";
  if (node.type === "Super") return "super";
  if (node.type === "MemberExpression" || node.type === "OptionalMemberExpression") {
    return `${expressionName(node.object)}.${node.computed ? "[…]" : keyName(node.property)}`;
  }
  return "…";
}

/** The name of a method's or property's key: `run`, `#state`, `"quoted"`, `[computed]`. */
function keyName(key: unknown, computed = false): string {
  if (!isNode(key)) return "…";
  if (computed) return `[${expressionName(key)}]`;
  if (key.type === "Identifier") return key.name as string;
  if (key.type === "PrivateName") return `#${keyName(key.id)}`;
  if (key.type === "StringLiteral" || key.type === "NumericLiteral") return String(key.value);
  return "…";
}

/**
 * The name a function is known by: its own (`function f`, a method's key) or,
 * for an anonymous one, the place it is put (`const f = () => …`, `this.f = …`,
 * `{ f: () => … }`, `(passed to setTimeout)`). `hint` is that place, worked
 * out by the caller from the parent node.
 */
function functionName(node: AstNode, hint: string | undefined, className: string | undefined): string {
  if (node.type === "ClassMethod" || node.type === "ClassPrivateMethod" || node.type === "ObjectMethod") {
    const key = keyName(node.key, node.computed === true);
    const kind = node.kind === "get" || node.kind === "set" ? `${node.kind} ` : "";
    const owner = node.type === "ObjectMethod" ? "" : `${className ?? "(class)"}.`;
    return `${kind}${owner}${key}`;
  }
  if (isNode(node.id)) return keyName(node.id);
  const kind = node.type === "ArrowFunctionExpression" ? "arrow" : "function";
  if (hint === undefined) return `(anonymous ${kind})`;
  return hint.startsWith("(") ? `(${kind} ${hint.slice(1)}` : hint;
}

/** What to call an anonymous function found at `parent[field]`, if the parent says. */
function placeName(parent: AstNode, field: string, inherited: string | undefined, className: string | undefined): string | undefined {
  switch (parent.type) {
    case "VariableDeclarator":
      return field === "init" ? expressionName(parent.id) : undefined;
    case "AssignmentExpression":
      return field === "right" ? expressionName(parent.left) : undefined;
    case "ObjectProperty":
      return field === "value" ? keyName(parent.key, parent.computed === true) : undefined;
    case "ClassProperty":
    case "ClassPrivateProperty":
    case "ClassAccessorProperty":
      return field === "value" ? `${className ?? "(class)"}.${keyName(parent.key, parent.computed === true)}` : undefined;
    case "CallExpression":
    case "OptionalCallExpression":
    case "NewExpression":
      return field === "arguments" ? `(passed to ${expressionName(parent.callee)})` : undefined;
    case "ExportDefaultDeclaration":
      return "default";
    // Wrappers that do not change what the function is called.
    case "TSAsExpression":
    case "TSSatisfiesExpression":
    case "TSNonNullExpression":
    case "TSTypeAssertion":
    case "ParenthesizedExpression":
      return inherited;
    default:
      return undefined;
  }
}

/**
 * Every function-like node in `source` (TypeScript), with its length in
 * lines. A nested function's name is prefixed by its enclosing functions'
 * (`supervise > spawn`). Throws Babel's SyntaxError on a file it cannot parse.
 */
function functionLengths(source: string): FunctionLength[] {
  const ast = parse(source, { sourceType: "module", plugins: ["typescript"] }) as unknown as AstNode;
  const found: FunctionLength[] = [];

  const walk = (node: AstNode, hint: string | undefined, outer: string | undefined, className: string | undefined): void => {
    if (node.type === "ClassDeclaration" || node.type === "ClassExpression") {
      className = isNode(node.id) ? keyName(node.id) : (hint ?? "(class)");
    }
    if (FUNCTION_TYPES.has(node.type) && node.loc) {
      const name = functionName(node, hint, className);
      outer = outer === undefined ? name : `${outer} > ${name}`;
      found.push({ name: outer, line: node.loc.start.line, lines: node.loc.end.line - node.loc.start.line + 1 });
    }
    for (const [field, value] of Object.entries(node)) {
      if (NOT_CHILDREN.has(field)) continue;
      for (const child of Array.isArray(value) ? value : [value]) {
        if (isNode(child)) walk(child, placeName(node, field, hint, className), outer, className);
      }
    }
  };
  walk(ast, undefined, undefined, undefined);
  return found;
}

/** The functions in `source` longer than the limit. */
const tooLong = (source: string): FunctionLength[] => functionLengths(source).filter((f) => f.lines > MAX_LINES);

/** The `.ts` files the rule covers, relative to the repository root, with `/` separators. */
function coveredFiles(): string[] {
  return ["lib", "cli"]
    .flatMap((dir) => readdirSync(join(root, dir), { recursive: true, encoding: "utf8" }).map((f) => `${dir}/${f.split(sep).join("/")}`))
    .filter((f) => f.endsWith(".ts") && !f.startsWith("lib/generated/"))
    .sort();
}

/** Source text of a function declaration `name` spanning exactly `lines` lines (at least 2). */
function functionOf(name: string, lines: number): string {
  return `function ${name}() {\n${"  work();\n".repeat(lines - 2)}}\n`;
}

/** `lines - 2` statements, to fill a body so that its braces make it `lines` lines long. */
const body = (lines: number): string => "    work();\n".repeat(lines - 2);

test("a function of 81 lines is reported, one of 80 is not", () => {
  const source = `${functionOf("atLimit", 80)}\n${functionOf("overLimit", 81)}`;
  assert.deepEqual(tooLong(source), [{ name: "overLimit", line: 82, lines: 81 }]);
  assert.deepEqual(
    functionLengths(source).map((f) => [f.name, f.lines]),
    [["atLimit", 80], ["overLimit", 81]],
  );
});

test("a nested arrow is counted on its own, and in the lines of the function that holds it", () => {
  const source = [
    "export function outer() {", // line 1
    "  const inner = () => {", // line 2
    body(81).trimEnd(),
    "  };", // line 82
    "  setTimeout(() => {", // line 83
    "    work();",
    "  }, 10);", // line 85
    "}", // line 86
  ].join("\n");
  assert.deepEqual(functionLengths(source), [
    { name: "outer", line: 1, lines: 86 },
    { name: "outer > inner", line: 2, lines: 81 },
    { name: "outer > (arrow passed to setTimeout)", line: 83, lines: 3 },
  ]);
  assert.deepEqual(tooLong(source).map((f) => f.name), ["outer", "outer > inner"]);
});

test("methods, constructors, getters, setters, object methods and function expressions are all counted", () => {
  const member = (head: string) => `  ${head} {\n${body(81)}  }\n`;
  const source = [
    "export class Worker {",
    member("constructor()"),
    member("async run(): Promise<void>"),
    member("get state(): string"),
    member("set state(value: string)"),
    member("static create()"),
    member("#tick()"),
    `  onExit = () => {\n${body(81)}  };`,
    "}",
    `const handlers = {\n${member("claim()").trimEnd()},\n  release: function () {\n${body(81)}  },\n};`,
    `export default function () {\n${body(81)}}`,
    `const typed = (async () => {\n${body(81)}}) satisfies () => Promise<void>;`,
  ].join("\n");
  assert.deepEqual(
    tooLong(source).map((f) => [f.name, f.lines]),
    [
      ["Worker.constructor", 81],
      ["Worker.run", 81],
      ["get Worker.state", 81],
      ["set Worker.state", 81],
      ["Worker.create", 81],
      ["Worker.#tick", 81],
      ["Worker.onExit", 81],
      ["claim", 81],
      ["release", 81],
      ["default", 81],
      ["typed", 81],
    ],
  );
});

test(`no function in lib/ or cli/ is longer than ${MAX_LINES} lines`, () => {
  const files = coveredFiles();
  assert.ok(files.includes("cli/serve.ts") && files.includes("lib/worker.ts"), `expected lib/ and cli/ sources, found: ${files.join(", ")}`);
  const offenders = files.flatMap((file) => {
    let found: FunctionLength[];
    try {
      found = tooLong(readFileSync(join(root, file), "utf8"));
    } catch (error) {
      throw new Error(`${file}: cannot be parsed to count its functions' lines: ${(error as Error).message}`, { cause: error });
    }
    return found.map((f) => ({ file, ...f }));
  });
  if (offenders.length > 0) {
    const list = offenders.map((f) => `  ${f.file}:${f.line}  ${f.name}  ${f.lines} lines`).join("\n");
    assert.fail(
      `${offenders.length} function(s) in lib/ or cli/ are longer than ${MAX_LINES} lines; split each into smaller functions named for what they do:\n${list}`,
    );
  }
});
