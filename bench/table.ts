/**
 * Renders the bench's figures as Markdown tables, one per section, with
 * pgbg's figure divided by every other subject's in the same row.
 */

/** One figure. */
export interface Row {
  section: string;
  case: string;
  subject: string;
  value: number;
  unit: string;
  detail?: string;
  /**
   * The case whose other subjects pgbg's figure in this row is divided by,
   * when not its own: a pgbg-only row (the in-process drain) gets its
   * ratios against the figures of the drain case above it.
   */
  against?: string;
}

const format = (value: number, unit: string) =>
  Number.isNaN(value) ? "n/a" : unit === "ms" ? value.toFixed(2) : value >= 100 ? Math.round(value).toLocaleString("en") : value.toFixed(1);

/** The tables, followed by the details of each figure that has some. */
export function renderTable(rows: Row[]): string {
  const out: string[] = [];
  for (const section of [...new Set(rows.map((r) => r.section))]) {
    const inSection = rows.filter((r) => r.section === section);
    // The raw SQL ceilings first, whichever case first recorded them (COPY only has batch cases).
    const raw = (s: string) => (s.startsWith("raw SQL") ? 0 : 1);
    const subjects = [...new Set(inSection.map((r) => r.subject))].sort((a, b) => raw(a) - raw(b));
    const others = subjects.filter((s) => s !== "pgbg");
    const unit = inSection[0].unit;
    out.push(`\n### ${section} (${unit}${unit === "ms" ? ", lower is better" : ""})\n`);
    const ratioHeads = subjects.includes("pgbg") ? others.map((o) => `pgbg ÷ ${o}`) : [];
    out.push(`| case | ${[...subjects, ...ratioHeads].join(" | ")} |`);
    out.push(`| --- | ${[...subjects, ...ratioHeads].map(() => "---:").join(" | ")} |`);
    for (const c of [...new Set(inSection.map((r) => r.case))]) {
      const value = (s: string, inCase = c) => inSection.find((r) => r.case === inCase && r.subject === s)?.value;
      const cells = subjects.map((s) => (value(s) === undefined ? "" : format(value(s)!, unit)));
      const pgbg = value("pgbg");
      const base = inSection.find((r) => r.case === c && r.subject === "pgbg")?.against ?? c;
      const ratios = ratioHeads.length ? others.map((o) => (pgbg !== undefined && value(o, base) ? `${(pgbg / value(o, base)!).toFixed(2)}` : "")) : [];
      out.push(`| ${c} | ${[...cells, ...ratios].join(" | ")} |`);
    }
    const details = inSection.filter((r) => r.detail);
    if (details.length) {
      out.push("");
      for (const r of details) out.push(`- ${r.case} · ${r.subject}: ${r.detail}`);
    }
  }
  return out.join("\n");
}
