// The built package's types resolve under every moduleResolution an app may still use,
// including the old "node" (node10), which ignores `exports` and needs `typesVersions`
// to find `@flatrender/realtime-client/react`.
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { afterAll, describe, expect, it } from 'vitest';

const PACKAGE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const app = mkdtempSync(path.join(tmpdir(), 'realtime-client-types-'));
writeFileSync(path.join(app, 'package.json'), '{"type":"module"}'); // an ESM app, as Next.js apps are
afterAll(() => rmSync(app, { recursive: true, force: true }));

const SOURCE = `
import { createRealtimeClient, safeHttpUrl, type RealtimeClient } from '@flatrender/realtime-client';
import { RealtimeProvider, useRenderProgress, useRealtimeError } from '@flatrender/realtime-client/react';
export const make = (): RealtimeClient => createRealtimeClient({ url: 'https://rt.example', tokenUrl: '/t' });
export const used = [RealtimeProvider, useRenderProgress, useRealtimeError, safeHttpUrl];
`;

// An app adds its own event type to the typed catalog (issue 26 #9).
const EXTENDED = `
import { createRealtimeClient, type Envelope } from '@flatrender/realtime-client';
import { useEvent } from '@flatrender/realtime-client/react';
declare module '@flatrender/realtime-client' {
  interface EventCatalog {
    'comment.added.v1': Envelope<'comment.added.v1', { comment_id: string; text: string }>;
  }
}
const client = createRealtimeClient({ tokenUrl: '/t' });
client.on('comment.added.v1', (e) => e.data.text.toUpperCase());
client.on('render.job.progress.v1', (e) => e.data.progress.toFixed());
export function Comments(): null {
  useEvent('comment.added.v1', (e) => e.data.comment_id.length);
  useEvent('render.job.#', (e) => e.event_type.length);
  return null;
}
`;

function diagnostics(moduleResolution: ts.ModuleResolutionKind, module: ts.ModuleKind, source = SOURCE): string[] {
  const file = path.join(app, 'app.ts');
  writeFileSync(file, source);
  const program = ts.createProgram([file], {
    moduleResolution,
    module,
    target: ts.ScriptTarget.ES2022,
    lib: ['lib.es2022.d.ts', 'lib.dom.d.ts'],
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    types: [],
    typeRoots: [path.join(PACKAGE, 'node_modules', '@types')],
    ignoreDeprecations: '5.0',
  });
  return ts
    .getPreEmitDiagnostics(program)
    .map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n'));
}

describe('types resolve', () => {
  it.each([
    ['node (node10)', ts.ModuleResolutionKind.Node10, ts.ModuleKind.CommonJS],
    ['node16', ts.ModuleResolutionKind.Node16, ts.ModuleKind.Node16],
    ['bundler', ts.ModuleResolutionKind.Bundler, ts.ModuleKind.ESNext],
  ])('under moduleResolution %s', (_, resolution, module) => {
    expect(existsSync(path.join(PACKAGE, 'dist', 'react.d.ts')), 'run `npm run build` first').toBe(true);
    mkdirSync(path.join(app, 'node_modules', '@flatrender'), { recursive: true });
    const link = path.join(app, 'node_modules', '@flatrender', 'realtime-client');
    if (!existsSync(link)) symlinkSync(PACKAGE, link, 'dir');
    expect(diagnostics(resolution, module)).toEqual([]);
  }, 60_000); // a full type check of React's types: slow on a busy machine

  it('issue 26 #9: an app extends the typed catalog, and on()/useEvent() type its events', () => {
    mkdirSync(path.join(app, 'node_modules', '@flatrender'), { recursive: true });
    const link = path.join(app, 'node_modules', '@flatrender', 'realtime-client');
    if (!existsSync(link)) symlinkSync(PACKAGE, link, 'dir');
    expect(diagnostics(ts.ModuleResolutionKind.Bundler, ts.ModuleKind.ESNext, EXTENDED)).toEqual([]);
  }, 60_000);
});
