import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));

/** @type {import('next').NextConfig} */
export default {
  poweredByHeader: false,
  // The example lives inside the gateway's repository: keep Next.js from taking a parent
  // directory for the workspace root.
  turbopack: { root: here },
  outputFileTracingRoot: here,
};
