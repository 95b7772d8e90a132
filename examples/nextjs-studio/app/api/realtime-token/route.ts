// Mints the realtime token for the signed-in user, and says where the gateway is (read
// from the environment at run time, so the pages can be built statically). The client
// calls it before connecting and before expiry; signed out, it answers 401 and the client
// shows `unauthorized` instead of sending this body as a token, and stops asking after a
// few tries until the page gets focus again.
import { cookies } from 'next/headers';
import { NextResponse } from 'next/server';
import { mintRealtimeToken, readSession, SESSION_COOKIE } from '../../../lib/session';

const NO_STORE = { 'cache-control': 'no-store' };

export async function GET() {
  const session = readSession((await cookies()).get(SESSION_COOKIE)?.value);
  if (!session) {
    return NextResponse.json({ error: 'signed_out' }, { status: 401, headers: NO_STORE });
  }
  // An unset REALTIME_URL leaves `url` out: the client then reports invalid_options.
  const forced = process.env.REALTIME_TRANSPORT;
  return NextResponse.json(
    {
      token: mintRealtimeToken(session),
      url: process.env.REALTIME_URL, // e.g. https://rt.flatrender.example; checked by the client
      ...(forced === 'websocket' || forced === 'sse' ? { transport: forced } : {}),
    },
    { headers: NO_STORE },
  );
}
