// Mints the realtime token for the signed-in user. The client calls it (tokenUrl) before
// every connection and before expiry; signed out, it answers 401 and the client shows
// `unauthorized` instead of sending this body as a token.
import { cookies } from 'next/headers';
import { NextResponse } from 'next/server';
import { mintRealtimeToken, readSession, SESSION_COOKIE } from '../../../lib/session';

const NO_STORE = { 'cache-control': 'no-store' };

export async function GET() {
  const session = readSession((await cookies()).get(SESSION_COOKIE)?.value);
  if (!session) {
    return NextResponse.json({ error: 'signed_out' }, { status: 401, headers: NO_STORE });
  }
  return NextResponse.json({ token: mintRealtimeToken(session) }, { headers: NO_STORE });
}
