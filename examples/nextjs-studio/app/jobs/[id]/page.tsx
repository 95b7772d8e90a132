// One render job's page. Its progress comes from the gateway's live state: the client
// watches this job (keys=<id>, snapshot=1), so a page opened mid-render shows where the
// job is on its first live paint, and a finished job shows `completed`, with no REST call.
// The connection carries this job's events only (and notifications, for the bell).
import { notFound } from 'next/navigation';
import { Bell, ConnectionBadge, ErrorBanner, JobProgress } from '../../studio';

export default async function JobPage({ params }: { params: Promise<{ id: string }> }) {
  const { id } = await params;
  // The gateway's rule for a state key; anything else is no job of ours.
  if (!/^[A-Za-z0-9_.:@-]{1,255}$/.test(id)) notFound();
  const cdn = process.env.STUDIO_CDN_ORIGIN ?? 'https://cdn.flatrender.example';
  return (
    <>
      <header>
        <h1>FlatRender studio</h1>
        <div className="right">
          <ConnectionBadge />
          <Bell />
        </div>
      </header>
      <main>
        <ErrorBanner />
        <JobProgress jobId={id} allowedOrigins={[cdn]} />
        <p className="muted">
          <a href="/">All events</a>
        </p>
      </main>
    </>
  );
}
