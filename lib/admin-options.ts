/**
 * What every admin function takes besides its arguments (the schema), and
 * its check: shared by the admin API (lib/admin.ts) and the operators'
 * controls (lib/controls.ts).
 *
 * @module
 */
import { defaults } from "./config.ts";
import { checkedLater, checkOptions, type OptionCheck } from "./options.ts";
import { checkSchemaName } from "./statements.ts";

/** What every admin function takes besides its arguments. */
export interface AdminOptions {
  /** PostgreSQL schema holding pgbg's tables. @default "pgbg" */
  schema?: string;
}

/** The schema of `options`, checked, after checking that `options` holds only what `where` knows. */
export function schemaOf(where: string, options: unknown, checks: Record<string, OptionCheck> = {}): string {
  const o = checkOptions<AdminOptions>(where, options, { schema: checkedLater, ...checks });
  return checkSchemaName(o.schema ?? defaults.schema);
}
