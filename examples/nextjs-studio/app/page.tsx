import { cookies } from 'next/headers';
import { readSession, SESSION_COOKIE } from '../lib/session';
import { Bell, ConnectionBadge, ErrorBanner, LatestJob, RecentEvents } from './studio';

export default async function Home() {
  const session = readSession((await cookies()).get(SESSION_COOKIE)?.value);
  // Links from events may only point at the CDN (see LatestJob).
  const cdn = process.env.STUDIO_CDN_ORIGIN ?? 'https://cdn.flatrender.example';
  return (
    <>
      <header>
        <h1>FlatRender studio</h1>
        <div className="right">
          <span className="muted" data-testid="who">
            {session ? `${session.user} (${session.tenant})` : 'signed out'}
          </span>
          <ConnectionBadge />
          <Bell />
        </div>
      </header>
      <main>
        <ErrorBanner />
        <LatestJob allowedOrigins={[cdn]} />
        <RecentEvents />
        <p className="muted">
          {session ? <a href="/signout">Sign out</a> : <a href="/signin?tenant=tenant-demo&user=user-demo">Sign in as user-demo</a>}
        </p>
      </main>
    </>
  );
}
