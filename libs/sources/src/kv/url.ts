/** The `kv:<bucket>` source URL (kept apart from the adapter: checking a URL loads nothing else). */
import { IotvaultError } from "@iotvault/errors";

const BUCKET = /^[-\w]+$/;

/** The bucket of a `kv:<bucket>` URL. */
export function parseKvUrl(url: string): string {
  const bucket = url.startsWith("kv:") ? url.slice(3).replace(/^\/\//, "") : "";
  if (!BUCKET.test(bucket)) {
    throw new IotvaultError("INVALID_ARGUMENT", `invalid KV source ${JSON.stringify(url)}`, {
      hint: "write it as kv:<bucket> (letters, digits, - and _)",
    });
  }
  return bucket;
}
