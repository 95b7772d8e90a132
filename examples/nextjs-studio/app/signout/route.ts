import { NextResponse } from 'next/server';
import { SESSION_COOKIE } from '../../lib/session';

export function GET() {
  // A relative Location keeps the host the browser used (request.url may name another).
  const response = new NextResponse(null, { status: 303, headers: { location: '/' } });
  response.cookies.delete(SESSION_COOKIE);
  return response;
}
