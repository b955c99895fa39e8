// Builds the service map into ../internal/ui/dist, which the Go binary
// embeds. Output names carry no content hash and no build time, so the same
// sources and lockfile give the same bytes (scripts/build-ui.sh --check).
import { defineConfig } from 'vite';

export default defineConfig({
  base: './',
  build: {
    outDir: '../internal/ui/dist',
    emptyOutDir: true,
    sourcemap: false,
    chunkSizeWarningLimit: 2048,
    rollupOptions: {
      output: {
        entryFileNames: 'assets/[name].js',
        chunkFileNames: 'assets/[name].js',
        assetFileNames: 'assets/[name][extname]',
      },
    },
  },
});
