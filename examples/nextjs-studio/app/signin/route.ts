// Sign-in stand-in: /signin?tenant=T&user=U sets the session cookie and returns home.
import { NextResponse, type NextRequest } from 'next/server';
import { SESSION_COOKIE, sessionCookie, validId } from '../../lib/session';

export function GET(request: NextRequest) {
  const tenant = request.nextUrl.searchParams.get('tenant') ?? 'tenant-demo';
  const user = request.nextUrl.searchParams.get('user');
  if (!validId(tenant) || !validId(user)) {
    return NextResponse.json({ error: 'tenant and user: 1-64 of A-Z a-z 0-9 _ -' }, { status: 400 });
  }
  // A relative Location keeps the host the browser used (request.url may name another).
  const response = new NextResponse(null, { status: 303, headers: { location: '/' } });
  response.cookies.set(SESSION_COOKIE, sessionCookie({ tenant, user }), {
    httpOnly: true,
    sameSite: 'lax',
    secure: request.nextUrl.protocol === 'https:',
    path: '/',
  });
  return response;
}
