// A page that shows only the bell until the user opens the progress panel: the client
// selects the event types its mounted components need, so the gateway sends this page
// notifications only, and render jobs only while the panel is open.
import { Bell, ConnectionBadge, ErrorBanner, ProgressPanel } from '../studio';

export default function Focus() {
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
        <ProgressPanel allowedOrigins={[cdn]} />
      </main>
    </>
  );
}
