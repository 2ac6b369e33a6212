// ecosystem.config.cjs: "type": "module" projects need the .cjs name.
module.exports = {
  apps: [{
    name: 'esm-app',
    script: './dist/main.js',
    node_args: '--enable-source-maps',
  }],
};
