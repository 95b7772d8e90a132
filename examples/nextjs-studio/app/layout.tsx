// A server layout renders the realtime provider directly: its options are plain data (a
// URL and a token URL, no functions), read from the server's environment on every
// request. A NEXT_PUBLIC_* variable would instead be frozen into the client bundle when
// the app is built, and be `undefined` if it was only set at run time.
import { RealtimeProvider } from '@flatrender/realtime-client/react';
import { connection } from 'next/server';
import type { ReactNode } from 'react';
import './studio.css';

export const metadata = { title: 'FlatRender studio' };

export default async function RootLayout({ children }: { children: ReactNode }) {
  await connection(); // render per request: the environment is read at run time
  const url = process.env.REALTIME_URL; // e.g. https://rt.flatrender.example; checked by the client
  const tokenTransport = process.env.REALTIME_TOKEN_TRANSPORT === 'query' ? 'query' : 'protocol';
  const forced = process.env.REALTIME_TRANSPORT;
  const transport = forced === 'websocket' || forced === 'sse' ? forced : 'auto';
  return (
    <html lang="en">
      <body>
        <RealtimeProvider options={{ url: url as string, tokenUrl: '/api/realtime-token', tokenTransport, transport }}>
          {children}
        </RealtimeProvider>
      </body>
    </html>
  );
}
