module.exports = { apps: [{ name: 'ghost', script: 'dist/server.js' }] };
