import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Node by default; hook tests opt into jsdom with a file comment.
    environment: 'node',
  },
});
