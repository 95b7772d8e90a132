// The root layout stays static: no request-time API here, so pages that need none
// (/focus, /_not-found) are prerendered at build time. The realtime options are plain data
// without the gateway URL: the token endpoint answers it with each token, read from the
// server's environment at run time (a NEXT_PUBLIC_* variable would be frozen into the
// bundle when the app is built, and `await connection()` here would make every route
// dynamic).
import { RealtimeProvider } from '@flatrender/realtime-client/react';
import type { ReactNode } from 'react';
import './studio.css';

export const metadata = { title: 'FlatRender studio' };

export default function RootLayout({ children }: { children: ReactNode }) {
  return (
    <html lang="en">
      <body>
        <RealtimeProvider options={{ tokenUrl: '/api/realtime-token' }}>{children}</RealtimeProvider>
      </body>
    </html>
  );
}
